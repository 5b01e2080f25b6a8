"""The ingress deployment's own pieces that need no running Ray."""

from __future__ import annotations

from ray.serve._private.handle_options import DynamicHandleOptions
from ray.serve.handle import DeploymentHandle

from inferencesh_ray.ingress import made_here


def test_the_ingress_calls_apps_the_way_its_own_process_says_not_the_builders():
    here = DynamicHandleOptions()._by_reference  # actor calls, or Serve's gRPC in throughput mode
    built = DeploymentHandle("noop", "ours", handle_options=DynamicHandleOptions(_by_reference=not here))
    handle = made_here(built)
    assert (handle.deployment_name, handle.app_name) == ("noop", "ours")
    assert handle.handle_options._by_reference == here
