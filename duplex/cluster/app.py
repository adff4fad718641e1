"""``duplex serve --ray``: the Ray Serve application, started, served until a signal, and stopped cleanly.

One deployment, ``duplex``: each replica is one engine with ``--slots`` slots (replica.py) on its own GPU (or CPU
cores), the options of ``duplex serve`` passed on to every engine; Ray's proxy listens on ``--host``/``--port``
(on every node of the cluster) with TLS if asked; router.py sends a new conversation to a replica with a free
slot; autoscale.py keeps ``--spare-slots`` free between ``--replicas`` and ``--max-replicas``.

Capacity, as one server's (serving/server.py): a replica takes its slots, its ``--max-waiting`` waiting clients
and 64 handshakes under way (its ``max_ongoing_requests``); past that on every replica, Ray's own queue holds a
few more (``QUEUED``), then answers 503 with ``Retry-After``, as one server over its connection cap does.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Dict, List

from ..errors import UsageError
from ..runtime.devices import pick_device
from ..serving.options import CLUSTER_DRAIN, default_slots, page_url, usable_cpu_cores
from .autoscale import SessionAutoscaler
from .backend import duplex_root
from .router import ROUTING_PERIOD, FreeSlotRouter

log = logging.getLogger(__name__)

APP_NAME = "duplex"
HANDSHAKES = 64  # upgrades under way a replica takes beyond its slots and waiting clients (as one server's cap)
QUEUED = 16  # requests Ray's proxy holds when every replica is at its cap; past them: 503 with Retry-After
HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"  # Ray's switch for its HAProxy ingress (read as Ray starts)
ENGINE_DRAIN = 2.0  # the engine's own --drain once Ray has waited for its conversations (they are over by then)
# Options of ``duplex serve`` that are the cluster's, not each engine's: not passed on to the engines
CLUSTER_OPTIONS = {"help", "host", "port", "ssl_cert", "ssl_key", "unix_socket", "lifeline", "drain", "ray",
                   "ray_address", "replicas", "max_replicas", "spare_slots", "routing", "gpus_per_replica", "downscale_delay",
                   "cpus_per_replica", "slots", "threads", "haproxy"}


def engine_args(parser, args, slots: int, threads: int) -> List[str]:
    """The ``duplex serve`` options of each engine: every option given that is not the cluster's, as given."""
    out = ["--slots", str(slots), "--drain", str(ENGINE_DRAIN)]
    if threads:
        out += ["--threads", str(threads)]
    for action in parser._actions:
        if not action.option_strings or action.dest in CLUSTER_OPTIONS:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            if action.nargs in ("+", "*"):
                out += [flag, *map(str, value)]
            else:  # appended: the option once per value
                for item in value:
                    out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


def plan(args) -> dict:
    """What the cluster runs, from the options (checked here, before Ray starts): slots and threads per engine,
    Ray's reservations, replicas or autoscaling, routing."""
    device = pick_device(args.device).type
    slots = args.slots or default_slots(device, usable_cpu_cores())
    autoscale = args.max_replicas is not None
    if autoscale and args.max_replicas < args.replicas:
        raise UsageError(f"--max-replicas {args.max_replicas} is below --replicas {args.replicas}")
    if args.spare_slots is not None and not autoscale:
        raise UsageError("--spare-slots is what the autoscaler keeps free: give --max-replicas too")
    gpus = args.gpus_per_replica if args.gpus_per_replica is not None else (1.0 if device == "cuda" else 0.0)
    threads = args.threads or (0 if device == "cuda" else 1)
    cpus = args.cpus_per_replica if args.cpus_per_replica is not None else float(max(1, threads))
    haproxy = args.haproxy or os.environ.get(HAPROXY_SWITCH) == "1"
    if haproxy and args.routing == "pack":
        raise UsageError("--routing pack needs Ray's proxy: HAProxy sends each conversation to the replica with the "
                         "fewest (spread)")
    return {"device": device, "slots": slots, "threads": threads, "gpus": gpus, "cpus": cpus, "haproxy": haproxy,
            "autoscale": autoscale, "spare": 1 if args.spare_slots is None else args.spare_slots,
            "routing": "spread" if haproxy else args.routing or ("pack" if autoscale else "spread")}


def deployment_options(args, p: dict) -> dict:
    """Ray Serve's options for the ``duplex`` deployment."""
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, BackpressureConfig, RequestRouterConfig  # noqa: PLC0415,E501 - optional

    options = dict(
        name=APP_NAME,
        max_ongoing_requests=p["slots"] + args.max_waiting + HANDSHAKES,
        max_queued_requests=QUEUED,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=5),
        # Ray stops routing to a replica it removes, then waits this long for its conversations to end
        graceful_shutdown_timeout_s=args.drain + ENGINE_DRAIN + 5.0,
        graceful_shutdown_wait_loop_s=1.0,
        # Ray replaces a replica after 3 failed checks in a row: an engine process that died is replaced ~3 s later
        health_check_period_s=1.0,
        health_check_timeout_s=30.0,
        max_constructor_retry_count=2,
        ray_actor_options={"num_cpus": p["cpus"], "num_gpus": p["gpus"]},
    )
    if not p["haproxy"]:  # HAProxy balances by itself (leastconn: the replica with the fewest conversations)
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=FreeSlotRouter,
            request_router_kwargs={"slots": p["slots"], "pack": p["routing"] == "pack"},
            request_routing_stats_period_s=ROUTING_PERIOD, request_routing_stats_timeout_s=5.0)
    if p["autoscale"]:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=args.replicas, initial_replicas=args.replicas, max_replicas=args.max_replicas,
            upscale_delay_s=0.0, downscale_delay_s=args.downscale_delay, metrics_interval_s=1.0, look_back_period_s=2.0,
            policy=AutoscalingPolicy(policy_function=SessionAutoscaler,
                                     policy_kwargs={"slots": p["slots"], "spare": p["spare"]}))
    else:
        options["num_replicas"] = args.replicas
    return options


def build(args, p: dict, board: str):
    """The bound application (what ``serve.run`` takes)."""
    from ray import serve  # noqa: PLC0415 - optional

    from .replica import DuplexReplica  # noqa: PLC0415 - imports Ray and FastAPI

    child = engine_args(args.serve_parser, args, p["slots"], p["threads"])
    return serve.deployment(DuplexReplica, **deployment_options(args, p)).bind(child, board, args.token, args.drain)


def application(options: Dict[str, object]):
    """The application for Ray's own tools: ``serve run duplex.cluster.app:application replicas=2 slots=8
    lm=/models/model.safetensors``, or a KubeRay RayService's ``import_path: duplex.cluster.app:application`` with
    ``args`` (docs/scaling.md). ``options`` are ``duplex serve --ray``'s, by long name (``max_waiting`` or
    ``max-waiting``); a switch takes true/false; a repeatable option (``lora``) a list or one value. Ray's HTTP
    options (host, port, TLS) are then Ray's config's, not these."""
    from ..cli import build_parser  # noqa: PLC0415 - the command line's own parser, so the options are the same
    from ..cli.common import model_files  # noqa: PLC0415

    parser = build_parser()
    serve_parser = parser.parse_args(["serve"]).serve_parser
    actions = {a.dest: a for a in serve_parser._actions if a.option_strings}
    argv = ["serve", "--ray"]
    for key, value in options.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None or action.dest in ("help", "ray"):
            raise UsageError(f"{key}: not an option of duplex serve --ray")
        flag = action.option_strings[-1]
        if action.nargs == 0:  # a switch
            if str(value).lower() in ("true", "yes", "1", "on"):
                argv.append(flag)
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if action.nargs in ("+", "*"):
            argv += [flag, *map(str, values)]
        else:
            for item in values:
                argv += [flag, str(item)]
    args = parser.parse_args(argv)
    if args.drain is None:
        args.drain = CLUSTER_DRAIN
    model_files(args)  # a misspelt file: one line now, not a replica failing to start
    return build(args, plan(args), board="duplex-stats")


def _delete_quietly() -> None:
    from ray import serve  # noqa: PLC0415 - optional

    try:
        serve.delete(APP_NAME)
    except Exception as e:  # the cluster went away meanwhile
        log.warning("deleting the application: %s", e)


def run_cluster(args, files) -> int:
    """Start (or join) Ray, deploy, serve until SIGINT/SIGTERM, then stop: Ray stops routing to every replica and
    waits up to ``--drain`` for live conversations, a second signal closes at once."""
    import ray  # noqa: PLC0415 - optional
    from ray import serve  # noqa: PLC0415

    p = plan(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    local = args.ray_address is None
    if args.haproxy:
        if not local:
            raise UsageError("--haproxy starts a local cluster with HAProxy; on an existing cluster, start every "
                             f"node with {HAPROXY_SWITCH}=1 (docs/scaling.md) and leave --haproxy out")
        os.environ[HAPROXY_SWITCH] = "1"  # this process starts the cluster: Ray reads it there
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine (Ray asks otherwise)
    root = duplex_root()
    env = {"PYTHONPATH": os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)}
    ray.init(address=args.ray_address, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=True, configure_logging=False)
    board = f"duplex-stats-{os.getpid()}"
    http = {"host": args.host, "port": args.port}
    if args.ssl_cert:
        http.update(ssl_certfile=args.ssl_cert, ssl_keyfile=args.ssl_key)
    stop = threading.Event()
    signals = {}
    closed_at_once = False
    try:
        serve.start(http_options=http)
        what = (f"{args.replicas}-{args.max_replicas} replicas (autoscaling, {p['spare']} spare slot"
                f"{'s' if p['spare'] != 1 else ''})" if p["autoscale"] else
                f"{args.replicas} replica{'s' if args.replicas != 1 else ''}")
        print(f"duplex: {what} x {p['slots']} slots of {files.name} on Ray ({p['routing']} routing); starting the "
              "engines", file=sys.stderr)
        serve.run(build(args, p, board), name=APP_NAME, route_prefix="/", blocking=False)
        scheme = "https" if args.ssl_cert else "http"
        print(f"duplex: open {page_url(scheme, args.host, args.port, args.token)} in a browser; Kyutai clients "
              "connect to /api/chat", file=sys.stderr)
        for number in (signal.SIGINT, signal.SIGTERM):
            signals[number] = signal.signal(number, lambda n, f: stop.set())
        while not stop.wait(1.0):
            pass
        print(f"duplex serve --ray: stopping; live conversations may go on for up to {args.drain:g} s "
              "(Ctrl-C again to close them at once)", file=sys.stderr)
        again = threading.Event()
        for number in signals:
            signal.signal(number, lambda n, f: again.set())
        # Ray stops routing to every replica and waits for their conversations (graceful_shutdown_timeout_s);
        # on a thread, so that a second signal is heard meanwhile.
        deleting = threading.Thread(target=_delete_quietly, name="duplex-delete", daemon=True)
        deleting.start()
        while deleting.is_alive() and not again.wait(0.5):
            pass
        if again.is_set():
            closed_at_once = True
            print("duplex serve --ray: closing at once" + ("" if local else " (the cluster's replicas end their "
                  "conversations within --drain)"), file=sys.stderr)
        return 0
    finally:
        for number, previous in signals.items():
            signal.signal(number, previous)
        try:
            ray.kill(ray.get_actor(board, namespace="duplex"))
        except Exception:  # never created, or gone with the cluster
            pass
        if local:
            if not closed_at_once:
                serve.shutdown()
            ray.shutdown()  # the replicas end with the cluster; their engines stop as their stdin closes
