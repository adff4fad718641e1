"""How fast one connection is read: a token bucket per connection (``ReadBudget``). Past it the server stops
reading that connection for a while, so TCP pushes back on a client that floods; a client far over it is
closed. And how many files the server process may hold open (``raise_open_file_limit``)."""

from __future__ import annotations

import time
from typing import Callable, Optional


class ReadBudget:
    """A token bucket per connection: ``spend`` returns how long to pause reading before the next message, and
    ``throttled_for`` how long the client has been at or over its budget without the budget refilling to half
    (a flood, not jitter)."""

    def __init__(self, messages_per_second: float, bytes_per_second: float, burst_bytes: float,
                 clock: Callable[[], float] = time.monotonic):
        self.rates = (messages_per_second, bytes_per_second)
        self.capacity = (messages_per_second, burst_bytes)  # one second of messages; one largest message
        self.tokens = list(self.capacity)
        self.clock = clock
        self.last = clock()
        self._throttled_since: Optional[float] = None

    def spend(self, size: int) -> float:
        now = self.clock()
        elapsed, self.last = now - self.last, now
        delay = 0.0
        # Every message costs at least 64 bytes, so a stream of tiny ones meets the byte budget too.
        for i, cost in enumerate((1.0, float(max(size, 64)))):
            self.tokens[i] = min(self.capacity[i], self.tokens[i] + elapsed * self.rates[i]) - cost
            if self.tokens[i] < 0:
                delay = max(delay, -self.tokens[i] / self.rates[i])
        # Throttling ends when the budget has refilled to half, not when one message happens to fit: a flood
        # paced just at the budget's rate (each message fitting after the pause before it) stays a flood.
        if delay == 0 and all(t >= c / 2 for t, c in zip(self.tokens, self.capacity)):
            self._throttled_since = None
        elif delay > 0 and self._throttled_since is None:
            self._throttled_since = now
        return delay

    @property
    def throttled_for(self) -> float:
        return 0.0 if self._throttled_since is None else self.clock() - self._throttled_since


def raise_open_file_limit(resource_module=None) -> "tuple[int, int]":
    """Raise this process's soft limit of open files to its hard limit; returns (before, after).

    Service managers start a process with a soft limit of 1024 files (systemd, most shells), while the hard limit
    they allow is far higher: a server at 1024 refuses new connections, live users' reconnections among them,
    once about a thousand half-open ones sit there. Only the soft limit moves, within what the system already
    grants; where there is no such limit (Windows) nothing changes."""
    if resource_module is None:
        try:
            import resource as resource_module  # noqa: PLC0415  (POSIX only: Windows has no such limit)
        except ImportError:
            return (-1, -1)
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    if hard == resource_module.RLIM_INFINITY or soft == hard or (soft != resource_module.RLIM_INFINITY
                                                                 and soft > hard):
        return (soft, soft)
    try:
        resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a platform that caps it lower (macOS: OPEN_MAX): keep what we have
        return (soft, soft)
    return (soft, hard)

