"""Seeded, bounded hostile traffic against the server, with a health check after each family of messages."""

import pytest
from helpers import serve

from duplex.bench.fuzz import FAMILIES, LogWatcher, fuzz
from duplex.bench.serve import UNLIMITED_RATES


@pytest.mark.slow
def test_hostile_traffic_family_by_family_leaves_the_server_healthy():
    """7,000 messages in 7 families (about 20 s on 2 cores); after each the server answers its stats, a
    well-behaved client gets one reply per frame, no session is left and nothing was logged as an error."""
    with LogWatcher() as watcher:
        async def test(server, url):
            return await fuzz(url, messages=7000, seed=1, log_problems=watcher.take)

        report = serve(test, slots=3, max_waiting=1, **UNLIMITED_RATES)  # as `duplex bench serve --fuzz` runs it
    families = {r["family"]: r for r in report["families"]}
    assert list(families) == list(FAMILIES)
    for r in report["families"]:
        assert not r["problems"], r
    assert report["healthy"]
    assert families["malformed"]["messages"] == 1000 and families["flood"]["messages"] == 1000
    assert families["oversized"]["closes"] == {"1009": 3}  # message too big
    assert families["bomb"]["closes"].get("1008") == 1  # over the read budget at once
    assert families["churn"]["connections"] == 100 and families["http"]["connections"] == 50
    assert families["queue"]["closes"] == {"refused": 100}  # the stalled waiter holds the one waiting place
    assert sum(r["messages"] for r in report["families"]) >= 2000


def test_the_log_watcher_catches_tracebacks_and_errors():
    import logging

    with LogWatcher() as watcher:
        logging.getLogger("duplex.serving.server").info("fine")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("websockets.server").exception("connection handler failed")
        logging.getLogger("duplex.serving.server").error("frame step failed")
    found = watcher.take()
    assert len(found) == 2 and "(RuntimeError)" in found[0] and "frame step failed" in found[1]
