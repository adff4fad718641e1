"""One ``/api/stats`` for the whole application: every replica's figures, added up, and each replica's own.

Each replica puts its server's ``/api/stats`` on a board (a small Ray actor, ``StatsBoard``, one per application)
once a second; any replica answering ``/api/stats`` reads the board and adds the figures up (``aggregate``). A
replica that stops putting (it died, or was removed) drops off the board after ``MAX_AGE`` seconds, so the view
is of the replicas that serve now. The board holds what replicas said, nothing else: losing it (it is restarted)
costs a second of figures, no conversation.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

MAX_AGE = 5.0  # seconds: a replica that has said nothing for this long is not counted

# Counters added up across replicas (each server's /api/stats has them at the top level)
SUMMED = ("slots", "sessions", "free_slots", "waiting", "connections", "refused", "rate_limited", "over_capacity",
          "accept_errors", "prompting", "deadline_misses")
# Figures of the whole that are the worst replica's (a latency is not a sum)
WORST = ("step_ms_p50", "step_ms_p99")
# Each replica's own line in ``per_replica``
PER_REPLICA = ("slots", "sessions", "free_slots", "waiting", "connections", "refused", "ticks", "deadline_misses",
               "step_ms_p50", "step_ms_p99")


class StatsBoard:
    """What each replica last said (its server's stats, and when). Wrapped with ``ray.remote`` by replica.py."""

    def __init__(self):
        self._said: Dict[str, tuple] = {}

    def put(self, replica: str, stats: dict) -> None:
        self._said[replica] = (time.monotonic(), stats)

    def forget(self, replica: str) -> None:
        self._said.pop(replica, None)

    def get(self, max_age: float = MAX_AGE) -> Dict[str, dict]:
        now = time.monotonic()
        for replica in [r for r, (when, _) in self._said.items() if now - when > max_age]:
            del self._said[replica]
        return {replica: stats for replica, (_, stats) in self._said.items()}


def _add(into: dict, more: dict) -> None:
    for name, value in more.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            into[name] = into.get(name, 0) + value


def aggregate(said: Dict[str, dict], extra: Optional[Dict[str, dict]] = None) -> dict:
    """The application's ``/api/stats`` from each replica's: the same keys as one server's (so the page and
    ``duplex bench serve`` read it unchanged), counters added up, latencies the worst replica's, ``per_session``
    keyed ``replica/slot``, and ``per_replica`` (each replica's own figures, plus ``extra[replica]``: its process,
    its place in routing). Model, quantization and adapters are the first replica's (every replica of one
    application runs the same options)."""
    replicas = sorted(said)
    first = said[replicas[0]] if replicas else {}
    out = {"model": first.get("model", ""), "quantization": first.get("quantization"), "lora": first.get("lora"),
           "replicas": len(replicas)}
    for name in SUMMED:
        out[name] = sum(said[r].get(name) or 0 for r in replicas)
    for name in WORST:
        values = [said[r][name] for r in replicas if said[r].get(name) is not None]
        out[name] = max(values) if values else None
    out["ticks"] = max((said[r].get("ticks") or 0 for r in replicas), default=0)
    for group in ("totals", "admission", "prompts"):
        total: dict = {}
        for r in replicas:
            _add(total, said[r].get(group) or {})
        out[group] = total
    out["per_session"] = {f"{r}/{slot}": session for r in replicas
                          for slot, session in (said[r].get("per_session") or {}).items()}
    out["per_replica"] = {r: {**{name: said[r].get(name) for name in PER_REPLICA}, **((extra or {}).get(r) or {})}
                          for r in replicas}
    return out
