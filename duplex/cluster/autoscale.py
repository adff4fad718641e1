"""How many replicas: enough that ``spare`` slots stay free for the next callers.

A replica takes seconds to minutes to start (loading a model), so waiting until every slot is taken means callers
wait or are refused meanwhile; this policy keeps ``spare`` slots free: ceil((sessions + spare) / slots) replicas.
``sessions`` is Ray's count of ongoing requests (every conversation and every waiting client is one for its whole
life, plus the odd HTTP request). Ray applies ``--replicas`` / ``--max-replicas`` and its delays around it
(``upscale_delay_s``, ``downscale_delay_s``), so a call ending does not remove a replica at once.
"""

from __future__ import annotations

import math


def replicas_for(sessions: float, slots: int, spare: int) -> int:
    return max(1, math.ceil((max(0.0, sessions) + spare) / max(1, slots)))


class SessionAutoscaler:
    """A Ray Serve autoscaling policy (a class: Ray builds it with ``policy_kwargs``, then calls it)."""

    def __init__(self, slots: int = 1, spare: int = 1):
        self.slots, self.spare = int(slots), int(spare)

    def __call__(self, ctx):
        return replicas_for(ctx.total_num_requests, self.slots, self.spare), {}
