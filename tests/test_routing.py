"""The warm router's ranking, without a running Ray: replicas and requests are stand-ins."""

import asyncio
from types import SimpleNamespace

from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve.request_router import ReplicaID

from inferencesh_ray.routing import WarmRouter

DEPLOYMENT = DeploymentID(name="app", app_name="app")


def replica(name: str, *reported: str) -> SimpleNamespace:
    return SimpleNamespace(replica_id=ReplicaID(name, DEPLOYMENT), multiplexed_model_ids=set(reported))


def request(key: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(multiplexed_model_id=key), routing_context=SimpleNamespace())


def router(local_view_s: float = 5.0) -> WarmRouter:
    router = WarmRouter(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN)
    router.initialize_state(local_view_s=local_view_s)
    return router


def ranks(warm: WarmRouter, replicas, pending) -> list[list[str]]:
    chosen = asyncio.run(warm.choose_replicas(replicas, pending))
    return [sorted(r.replica_id.unique_id for r in rank) for rank in chosen]


def test_warm_and_empty_replicas_come_first_then_shared_keys_then_the_rest():
    replicas = [replica("c", "c"), replica("warm", "a"), replica("empty"), replica("b1", "b"), replica("b2", "b")]
    assert ranks(router(), replicas, request("a")) == [["empty", "warm"], ["b1"], ["b2"], ["c"]]


def test_the_replica_to_switch_is_the_one_whose_key_was_wanted_longest_ago():
    old, recent = replica("old", "x"), replica("recent", "y")
    warm = router()
    for key in ("x", "y"):
        ranks(warm, [recent, old], request(key))
    assert ranks(warm, [recent, old], request("z")) == [["old"], ["recent"]]
    # Keys nobody asked for through this router go first of all.
    assert ranks(warm, [recent, old, replica("stranger", "w")], request("z"))[0] == ["stranger"]


def test_what_the_router_sent_outweighs_a_late_report():
    one, two = replica("one"), replica("two")
    warm = router()
    warm.on_request_routed(request("a"), one.replica_id, None)
    # The replicas have not reported yet: "b" must not go where "a" was just sent.
    assert ranks(warm, [one, two], request("b")) == [["two"], ["one"]]
    assert ranks(warm, [one, two], request("a")) == [["one", "two"]]


def test_reports_take_over_once_the_local_view_is_old():
    one = replica("one", "b")
    stale = router(local_view_s=0.0)
    stale.on_request_routed(request("a"), one.replica_id, None)
    assert stale.held_key(one) == "b"


def test_requests_without_a_key_may_go_anywhere_and_every_miss_backs_off():
    replicas = [replica("one", "a"), replica("two")]
    pending = request("")
    assert ranks(router(), replicas, pending) == [["one", "two"]]
    assert pending.routing_context.should_backoff is True


def test_a_dead_replica_is_forgotten():
    one = replica("one")
    warm = router()
    warm.on_request_routed(request("a"), one.replica_id, None)
    warm.on_replica_actor_died(one.replica_id)
    assert warm.held_key(one) is None
