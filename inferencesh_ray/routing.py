"""Warm routing: send each task to a replica already set up with its config.

Requests carry their setup key as Serve's multiplexed model id. Serve's default router
learns which replica holds which key from the replicas' reports, which reach it a moment
(seconds, on a loaded machine) after the replica switched; tasks routed in that window
land on the wrong replica and make it switch again. This router also remembers where it
sent each key itself, so a burst of mixed configs settles at once: one setup per
replica and config, not one per task.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Iterable, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

# How long what this router sent last outweighs a replica's own report. Long enough to
# cover the report's delay; short enough that another ingress's routing shows through.
LOCAL_VIEW_S = 5.0


class WarmRouter(RequestRouter):
    """Ranks replicas for a task: those warm with its key or empty first, the least
    loaded of them wins; then, one by one, the replicas to switch, the least needed first
    (a key another replica also holds, then the key wanted longest ago)."""

    def initialize_state(self, local_view_s: float = LOCAL_VIEW_S) -> None:
        self._local_view_s = local_view_s
        self._sent: dict[ReplicaID, tuple[str, float]] = {}
        self._wanted: dict[str, float] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every candidate is in the ranks below: if none takes the task, back off.
            pending_request.routing_context.should_backoff = True
        key = pending_request.metadata.multiplexed_model_id if pending_request else ""
        if not key:
            return [candidate_replicas]
        held = {replica.replica_id: self.held_key(replica) for replica in candidate_replicas}
        self._want(key, held.values())
        holders = Counter(held.values())
        warm = [replica for replica in candidate_replicas if held[replica.replica_id] in (key, None)]
        to_switch = sorted(
            (replica for replica in candidate_replicas if held[replica.replica_id] not in (key, None)),
            key=lambda replica: (holders[held[replica.replica_id]] == 1, self._wanted.get(held[replica.replica_id], 0.0)),
        )
        return ([warm] if warm else []) + [[replica] for replica in to_switch]

    def held_key(self, replica: RunningReplica) -> Optional[str]:
        """The setup key this replica holds (or is about to), None when it holds none."""
        sent = self._sent.get(replica.replica_id)
        if sent is not None and time.monotonic() - sent[1] < self._local_view_s:
            return sent[0]
        return next(iter(replica.multiplexed_model_ids), None)

    def _want(self, key: str, held: Iterable[Optional[str]]) -> None:
        self._wanted[key] = time.monotonic()
        if len(self._wanted) > 64:  # many configs come and go: remember only those held
            keep = set(held) | {key}
            self._wanted = {k: t for k, t in self._wanted.items() if k in keep}

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        key = pending_request.metadata.multiplexed_model_id
        if key:
            self._sent[replica_id] = (key, time.monotonic())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        self._sent.pop(replica_id, None)
        super().on_replica_actor_died(replica_id)
