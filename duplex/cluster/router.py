"""Where a new conversation goes: a replica with a free slot, never one that is full while another is not.

Ray Serve's default router picks two replicas at random and takes the less busy (power of two choices): with
three replicas or more, a new caller can be sent to wait at a full replica while another has a free slot. This
router looks at all of them. A WebSocket is one ongoing request for its whole life (measured, docs/scaling.md),
so a replica's ongoing requests, as Ray's router counts them, are its sessions plus its waiting clients (plus the
odd HTTP request); every replica of one application has the same ``slots``. The order it returns:

1. replicas with a free slot: ``spread``, the fewest ongoing first (the lowest step time); or ``pack``, the oldest
   replica first, so that the newest stay empty and are the ones the autoscaler removes (Ray removes the newest
   replicas first): no conversation is cut by a scale-down that could have taken an empty replica;
2. full replicas, the shortest queue first: the caller waits there with the server's own queue notices, or is
   refused with its "server full" answer (the same as one server's);
3. replicas that say they are draining, last.

Ray tries them in this order; one that turns a request away (at ``max_ongoing_requests``) passes it to the next.
``order`` is the rule itself, without Ray, so that it can be tested alone.

Ray's count of a replica's requests grows when a request is sent, a moment after this router picked it; callers
arriving together (measured: five at once) would all see the same counts and go to the same replica. So a pick is
counted at once, as *reserved*, until Ray sends the request (``on_send_request``) or ``RESERVATION`` seconds pass
(a request that was cancelled instead).
"""

from __future__ import annotations

import collections
import time
from typing import Dict, List, Optional, Sequence

from ray.serve.request_router import FIFOMixin, RequestRouter

ROUTING_PERIOD = 1.0  # seconds between Ray's readings of each replica's record_routing_stats
RESERVATION = 2.0  # seconds a pick counts as a request on its replica before Ray has sent it


def order(replicas: Sequence[tuple], slots: int, pack: bool) -> List[object]:
    """``replicas``: (key, ongoing or None if unknown, started (seconds), draining) each; the keys, best first."""
    def ongoing(r):
        return r[1] or 0

    free = [r for r in replicas if not r[3] and ongoing(r) < slots]
    full = [r for r in replicas if not r[3] and ongoing(r) >= slots]
    draining = [r for r in replicas if r[3]]
    free.sort(key=(lambda r: (r[2], ongoing(r))) if pack else (lambda r: (ongoing(r), r[2])))
    full.sort(key=lambda r: (ongoing(r), r[2]))
    draining.sort(key=ongoing)
    return [r[0] for r in (*free, *full, *draining)]


class FreeSlotRouter(FIFOMixin, RequestRouter):
    """Ray Serve's request router for duplex replicas (``request_router_kwargs``: ``slots``, ``pack``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots, self.pack = 1, False
        self._reserved: Dict[object, collections.deque] = collections.defaultdict(collections.deque)

    def initialize_state(self, slots: int = 1, pack: bool = False, **kwargs) -> None:
        self.slots, self.pack = max(1, int(slots)), bool(pack)

    def _reservations(self, replica_id) -> int:
        picks = self._reserved.get(replica_id)
        if not picks:
            return 0
        now = time.monotonic()
        while picks and now - picks[0] > RESERVATION:
            picks.popleft()
        return len(picks)

    def on_send_request(self, replica_id) -> None:
        super().on_send_request(replica_id)
        picks = self._reserved.get(replica_id)
        if picks:
            picks.popleft()  # Ray's own count has it now

    async def choose_replicas(self, candidate_replicas, pending_request: Optional[object] = None):
        if pending_request is not None:
            # all full and Ray's own queue in use: back off between tries rather than spin
            pending_request.routing_context.should_backoff = True
        cache = self.replica_queue_len_cache
        facts = []
        for replica in candidate_replicas:
            stats = replica.routing_stats or {}
            meta = getattr(replica, "replica_metadata", None) or {}
            ongoing = (cache.get(replica.replica_id) or 0) + self._reservations(replica.replica_id)
            facts.append((replica, ongoing, float(meta.get("started", 0.0)), bool(stats.get("draining"))))
        ranked = order(facts, self.slots, self.pack)
        if ranked:
            self._reserved[ranked[0].replica_id].append(time.monotonic())
        return [[replica] for replica in ranked]
