"""The network side is bounded (issue 23, deliverable 1): request and upgrade rates per peer and in all (429 with
Retry-After, counted), the WebSocket connections handled at once (503 past the cap, counted)."""

import asyncio
import errno
import http.client
import logging

import pytest
from helpers import make_engine, serve
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from duplex.serving.limits import RateLimit, peer_key
from duplex.serving.options import ServerOptions
from duplex.serving.protocol import HANDSHAKE, message
from duplex.serving.server import VoiceServer


def get(port, path, source="127.0.0.1"):
    """(status, Retry-After) of a GET from ``source`` (any 127.x address is this machine on Linux)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        conn.close()


def fake_clock(server):
    now = [1000.0]
    server._now = lambda: now[0]
    return now


def test_a_peer_past_its_request_rate_gets_429_with_retry_after_and_is_counted():
    async def test(server, url):
        now = fake_clock(server)
        loop = asyncio.get_running_loop()
        answers = [await loop.run_in_executor(None, get, server.port, "/api/stats") for _ in range(4)]
        other = await loop.run_in_executor(None, get, server.port, "/api/stats", "127.0.0.2")
        now[0] += 1.0  # one request's worth refills
        later = await loop.run_in_executor(None, get, server.port, "/api/stats")
        return answers, other, later, server.stats()

    answers, other, later, stats = serve(test, http_per_peer=1.0, http_peer_burst=3.0)
    assert [status for status, _ in answers] == [200, 200, 200, 429]
    assert answers[3][1] == "1"
    assert other[0] == 200  # another peer has its own budget
    assert later[0] == 200
    assert stats["rate_limited"] == 1


def test_all_peers_together_are_limited_but_health_probes_only_per_peer():
    async def test(server, url):
        fake_clock(server)
        loop = asyncio.get_running_loop()
        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        answers = [await loop.run_in_executor(None, get, server.port, "/", source) for source in sources]
        health = await loop.run_in_executor(None, get, server.port, "/health", "127.0.0.5")
        return answers, health

    answers, health = serve(test, http_total=1.0, http_total_burst=2.0)
    assert [status for status, _ in answers] == [200, 200, 429]
    assert health[0] == 200


def test_upgrades_have_their_own_budget_so_polling_cannot_use_up_reconnections():
    async def test(server, url):
        fake_clock(server)
        loop = asyncio.get_running_loop()
        for _ in range(2):
            async with connect(url + "/api/chat") as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == message(HANDSHAKE)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url + "/api/chat"):
                pass
        stats = await loop.run_in_executor(None, get, server.port, "/api/stats")
        return refused.value.response, stats, server.stats()["rate_limited"]

    response, stats, limited = serve(test, upgrades_per_peer=1.0, upgrades_peer_burst=2.0)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert stats[0] == 200 and limited == 1


def test_the_page_polling_and_a_burst_of_sessions_from_one_peer_stay_under_the_default_limits():
    o = ServerOptions()
    now = [0.0]
    requests = RateLimit(o.http_per_peer, o.http_peer_burst, o.http_total, o.http_total_burst, clock=lambda: now[0])
    upgrades = RateLimit(o.upgrades_per_peer, o.upgrades_peer_burst, o.upgrades_total, o.upgrades_total_burst,
                         clock=lambda: now[0])
    assert all(upgrades.take("10.0.0.1") == 0 for _ in range(16))  # a load test opens its sessions at once
    waits = [requests.take("10.0.0.1")]  # the page
    for _ in range(1800):  # an hour of /api/stats every 2 s, a favicon miss, and a reconnection each minute
        now[0] += 2.0
        waits += [requests.take("10.0.0.1"), requests.take("10.0.0.1")]
        waits.append(upgrades.take("10.0.0.1") if len(waits) % 90 == 0 else 0.0)
    assert max(waits) == 0.0


def test_rate_limit_buckets_of_quiet_peers_are_forgotten_and_their_number_is_capped():
    now = [0.0]
    limit = RateLimit(1.0, 2.0, 1e9, 1e9, clock=lambda: now[0], max_peers=100)
    for i in range(1000):
        limit.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limit.peers) == 100
    now[0] += 10.0  # every bucket refilled: the next request forgets them
    limit.take("10.9.9.9")
    assert list(limit.peers) == ["10.9.9.9"]
    with pytest.raises(ValueError):
        RateLimit(0.0, 1.0, 1.0, 1.0)


def test_connections_past_the_cap_get_503_at_once_and_are_counted():
    async def test(server, url):
        async with connect(url + "/api/chat") as live, connect(url + "/api/chat") as waiter:
            assert await asyncio.wait_for(live.recv(), 5) == message(HANDSHAKE)
            await asyncio.wait_for(waiter.recv(), 5)  # its place in the queue
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/api/chat"):
                    pass
            over = server.over_capacity, server.stats()["over_capacity"]
            await waiter.close()
        for _ in range(50):  # both gone: there is room again
            if not server._handling:
                break
            await asyncio.sleep(0.05)
        async with connect(url + "/api/chat") as again:
            assert await asyncio.wait_for(again.recv(), 5) == message(HANDSHAKE)
        return refused.value.response, over

    response, over = serve(test, slots=1, max_waiting=4, max_connections=2)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5" and over == (1, 1)


def test_an_upgrade_that_fails_after_the_check_does_not_hold_a_place_for_ever():
    async def test(server, url):
        for _ in range(3):  # a bad Origin fails the handshake after the request was let through
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/api/chat", origin="https://elsewhere.example"):
                    pass
            assert refused.value.response.status_code == 403
        await asyncio.sleep(0.1)
        async with connect(url + "/api/chat", origin="https://page.example") as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == message(HANDSHAKE)
        return server.over_capacity

    assert serve(test, max_connections=1, origins=["https://page.example"]) == 0


def test_the_default_cap_leaves_room_for_every_slot_and_waiter():
    async def test(server, url):
        return server.max_connections

    assert serve(test, slots=2, max_waiting=10) == 2 + 10 + 64


def test_accept_errors_for_want_of_descriptors_are_counted_and_logged_rarely(caplog):
    async def test(server, url):
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.INFO):
            for _ in range(20):  # what asyncio reports once a second while out of descriptors
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
            loop.call_exception_handler({"message": "something else"})
        return server.stats()["accept_errors"], loop.get_exception_handler()

    accept_errors, handler = serve(test)
    about_files = [r for r in caplog.records if "Too many open files" in r.getMessage()]
    assert accept_errors == 20 and len(about_files) == 2  # the 1st and the 10th
    assert any("something else" in r.getMessage() for r in caplog.records)  # other reports still logged
    assert handler is not None  # installed while serving


def test_stop_puts_back_the_exception_handler_the_loop_had():
    def mine(loop, context):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(mine)
        server = VoiceServer(make_engine(1), ServerOptions(port=0))
        await server.start()
        during = loop.get_exception_handler()
        await server.stop()
        return during, loop.get_exception_handler()

    during, after = asyncio.run(main())
    assert during.__func__ is VoiceServer._loop_exception and after is mine


def test_headers_are_bounded_yet_a_browser_upgrade_fits():
    """websockets' own limits (8 KiB lines, 128 headers; it has no per-server setting, and the process-wide ones
    are left alone): a browser's upgrade with a 4 KiB cookie passes, longer lines or many more headers get 431.
    A guard against a websockets upgrade that lifts them, not a change of ours."""
    async def raw(port, extra):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(("GET /api/chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra
                      + "\r\n").encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return status.split()[1]

    async def test(server, url):
        browser = "Cookie: " + "a" * 4000 + "\r\n" + "".join(f"X-Header-{i}: value\r\n" for i in range(20))
        return [await raw(server.port, extra) for extra in
                (browser, "Cookie: " + "a" * 9000 + "\r\n", "".join(f"X-H{i}: v\r\n" for i in range(200)))]

    assert serve(test) == [b"101", b"431", b"431"]


def test_an_ipv6_peer_is_its_slash_64_network_so_it_cannot_spread_a_flood_over_its_addresses():
    assert peer_key("2001:db8:1:2::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7" and peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("fe80::1%eth0") == "fe80::/64" and peer_key("") == ""


def test_the_page_and_its_polling_get_every_answer_from_a_server_with_the_default_limits():
    async def test(server, url):
        now = fake_clock(server)
        loop = asyncio.get_running_loop()
        statuses = [(await loop.run_in_executor(None, get, server.port, "/"))[0]]
        for _ in range(60):  # two minutes of the page's polling, with a favicon miss each time for good measure
            now[0] += 2.0
            statuses.append((await loop.run_in_executor(None, get, server.port, "/api/stats"))[0])
            statuses.append((await loop.run_in_executor(None, get, server.port, "/favicon.ico"))[0])
        return statuses, server.rate_limited

    statuses, limited = serve(test)
    assert statuses[0] == 200 and set(statuses[1::2]) == {200} and set(statuses[2::2]) == {404} and limited == 0


def test_the_per_peer_limits_are_options_of_duplex_serve():
    """Behind a reverse proxy every client has the proxy's address: the operator raises the per-peer limits."""
    from duplex.cli import build_parser
    from duplex.cli.options import options_from_args

    args = build_parser().parse_args(["serve", "--upgrades-per-peer", "50", "--http-per-peer", "500"])
    options = options_from_args(ServerOptions, args)
    assert (options.upgrades_per_peer, options.http_per_peer) == (50.0, 500.0)
    defaults = options_from_args(ServerOptions, build_parser().parse_args(["serve"]))
    assert (defaults.upgrades_per_peer, defaults.http_per_peer) == (ServerOptions.upgrades_per_peer,
                                                                    ServerOptions.http_per_peer)
