"""Limits that keep the 80 ms clock from the network's reach (issue 23, deliverable 1, first parts): /api/stats is
computed at most a few times a second whoever polls it, and `duplex serve` raises its open-files soft limit to the
hard limit (a server at 1024 files turns users away)."""

import asyncio
import json
import subprocess
import sys
import urllib.request

from helpers import serve

from duplex.serving import server as server_module
from duplex.serving.limits import raise_open_file_limit


def test_stats_are_computed_at_most_once_per_interval_however_often_they_are_asked(monkeypatch):
    async def test(server, url):
        now = [1000.0]
        server._now = lambda: now[0]
        computed = []
        real = server.stats

        def counting():
            computed.append(1)
            return real()

        server.stats = counting
        base = url.replace("ws://", "http://")

        def get():
            with urllib.request.urlopen(base + "/api/stats", timeout=5) as r:
                return json.loads(r.read())

        loop = asyncio.get_running_loop()
        first = [await loop.run_in_executor(None, get) for _ in range(20)]  # a peer polling as fast as it can
        now[0] += server_module.STATS_MAX_AGE
        later = await loop.run_in_executor(None, get)
        return first, later, len(computed)

    first, later, computed = serve(test)
    assert computed == 2  # 21 requests: one computation per interval
    assert all(answer == first[0] for answer in first) and "ticks" in later


class FakeResource:
    RLIMIT_NOFILE, RLIM_INFINITY = 7, -1

    def __init__(self, soft, hard, refuse=False):
        self.limits, self.refuse = (soft, hard), refuse

    def getrlimit(self, which):
        return self.limits

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


def test_the_open_files_soft_limit_is_raised_to_the_hard_limit():
    fake = FakeResource(1024, 524288)
    assert raise_open_file_limit(fake) == (1024, 524288) and fake.limits == (524288, 524288)
    assert raise_open_file_limit(FakeResource(4096, 4096)) == (4096, 4096)  # nothing to raise
    assert raise_open_file_limit(FakeResource(1024, FakeResource.RLIM_INFINITY)) == (1024, 1024)  # left alone
    assert raise_open_file_limit(FakeResource(1024, 524288, refuse=True)) == (1024, 1024)  # a platform cap


def test_the_real_limit_is_raised_in_a_process_of_its_own():
    script = ("import resource; from duplex.serving.limits import raise_open_file_limit; "
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard)); "
              "before, after = raise_open_file_limit(); "
              "assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after, after; print(before, after, hard)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before, after, hard = (int(x) for x in result.stdout.split())
    assert before == min(256, hard) and (after == hard or hard == -1)
