"""How fast one connection is read: a token bucket per connection (``ReadBudget``). Past it the server stops
reading that connection for a while, so TCP pushes back on a client that floods; a client far over it is
closed. How many HTTP requests and WebSocket upgrades a peer, and all peers together, may make (``RateLimit``).
And how many files the server process may hold open (``raise_open_file_limit``)."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import Callable, Optional, Tuple


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



# The header in which a relay on the same machine names the peer it relays for (the front, front.py; a Ray Serve
# replica, duplex/cluster/relay.py): any such header from a client is removed or replaced by the relay.
PEER_HEADER = "X-Duplex-Peer"


def peer_key(host: str) -> str:
    """Whose budget a request from ``host`` spends: its IPv4 address, or the /64 network of its IPv6 address (one
    machine, one home or one cloud instance usually holds a whole /64, so per address it could spread a flood over
    2^64 budgets); an IPv4 address mapped into IPv6 is that IPv4 address. Anything else (a Unix socket) as it is."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # no zone index (fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimit:
    """Token buckets for requests: one per peer (its address) and one for all peers together. ``take(peer)``
    spends a token from both and returns 0, or, when either is empty, spends nothing and returns how many seconds
    until one refills (what ``Retry-After`` says). With ``count_total`` false only the peer's bucket counts.

    The per-peer buckets are kept in least-recently-used order and at most ``max_peers`` of them: a bucket that has
    refilled is the same as none, so the oldest ones are dropped as they refill (amortised O(1) a request), and past
    ``max_peers`` (peers spread over many addresses) the oldest go anyway; the total bucket still holds."""

    def __init__(self, per_peer: float, peer_burst: float, total: float, total_burst: float,
                 clock: Callable[[], float] = time.monotonic, max_peers: int = 65536):
        if min(per_peer, peer_burst, total, total_burst) <= 0:
            raise ValueError("rates and bursts must be positive")
        self.per_peer, self.peer_burst, self.total, self.total_burst = per_peer, peer_burst, total, total_burst
        self.clock, self.max_peers = clock, max_peers
        self.peers: "OrderedDict[str, Tuple[float, float]]" = OrderedDict()  # peer: (tokens, when)
        self.all = (total_burst, clock())

    @staticmethod
    def _refill(bucket: "Tuple[float, float]", rate: float, burst: float, now: float) -> float:
        tokens, when = bucket
        return min(burst, tokens + max(0.0, now - when) * rate)

    def take(self, peer: str, count_total: bool = True) -> float:
        now = self.clock()
        mine = self._refill(self.peers.get(peer, (self.peer_burst, now)), self.per_peer, self.peer_burst, now)
        everyone = self._refill(self.all, self.total, self.total_burst, now)
        wait = max((1.0 - mine) / self.per_peer if mine < 1.0 else 0.0,
                   (1.0 - everyone) / self.total if everyone < 1.0 and count_total else 0.0)
        if wait == 0.0:
            mine, everyone = mine - 1.0, everyone - (1.0 if count_total else 0.0)
        self.peers[peer] = (mine, now)
        self.peers.move_to_end(peer)
        self.all = (everyone, now)
        while self.peers:
            oldest, bucket = next(iter(self.peers.items()))
            if len(self.peers) <= self.max_peers and self._refill(bucket, self.per_peer, self.peer_burst,
                                                                  now) < self.peer_burst:
                break
            del self.peers[oldest]
        return wait
