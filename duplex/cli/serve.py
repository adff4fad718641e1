"""``duplex serve``: the WebSocket voice server on the model options."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
import threading

import torch

from ..errors import UsageError
from ..runtime.realtime import freeze_startup_objects
from ..serving.limits import raise_open_file_limit
from ..serving.options import (
    CLUSTER_DRAIN,
    ServerOptions,
    check_port_free,
    default_engine_threads,
    default_slots,
    quantization_text,
    tls_context,
    usable_cpu_cores,
)
from ..serving.server import VoiceServer
from .common import (
    add_model_options,
    build_engine,
    float_above,
    int_in,
    model_files,
    non_negative,
    pick_device,
    port,
    positive_float,
)
from .options import options_from_args

log = logging.getLogger(__name__)


def run_serve(args) -> int:
    if args.drain is None:
        args.drain = CLUSTER_DRAIN if args.ray else ServerOptions.drain
    if args.slots is not None and args.slots < 1:
        raise UsageError("--slots must be at least 1")
    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise UsageError("--ssl-cert and --ssl-key go together")
    if args.token is not None and not args.token.strip():
        raise UsageError("--token is empty (an unset variable?), which would let anyone in; give a secret, or "
                         "leave --token out")
    if args.voice_prompt_dir is not None and not os.path.isdir(args.voice_prompt_dir):
        raise UsageError(f"--voice-prompt-dir {args.voice_prompt_dir}: no such folder")
    if args.ray and args.unix_socket:
        raise UsageError("--ray and --unix-socket do not go together (Ray's proxy listens on --host/--port)")
    if args.ssl_cert:  # before minutes of model loading, not after
        tls_context(args.ssl_cert, args.ssl_key)
    if not args.unix_socket:
        try:
            check_port_free(args.host, args.port)  # likewise
        except OSError as e:
            raise UsageError(listen_error(args.host, args.port, e)) from None
    files = model_files(args)  # a misspelt file or repository: one line, before anything else is said
    if args.ray:
        try:
            from ..cluster import app as cluster
        except ImportError as e:
            raise UsageError(f"duplex serve --ray needs Ray Serve ({e.name or e} is missing): "
                             "pip install -e \".[ray]\" (or pip install \"ray[serve]==2.60.0\")") from None
        return cluster.run_cluster(args, files)
    if args.slots is None:
        args.slots = default_slots(pick_device(args.device).type, usable_cpu_cores())
        print(f"duplex: {args.slots} slot{'s' if args.slots != 1 else ''} (default for this machine; --slots to "
              "change)", file=sys.stderr)
    if not args.threads:
        args.threads = default_engine_threads(pick_device(args.device).type, usable_cpu_cores())
        if args.threads:
            print(f"duplex: {args.threads} engine thread{'s' if args.threads != 1 else ''} (default for this "
                  "machine: a core is left to the network; --threads to change)", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request is too much
    engine = build_engine(args, args.slots, files)
    if engine.files.is_default:
        log.info("serving the default model (duplex's own small model, trained on synthetic espeak conversations: "
                 "see README, \"The default model\")")
    quantization = quantization_text(getattr(engine, "quantization", None))  # "int8 weights, fp8 KV"
    log.info("model: %s%s", engine.files.name, f" ({quantization})" if quantization else "")
    options = options_from_args(ServerOptions, args)
    options.model_name = engine.files.name
    # requests without a token never take the GIL from the frame clock (serving/front.py); behind a relay on a Unix
    # socket (a Ray Serve replica, duplex/cluster/), the relay is in another process already
    options.front = not args.unix_socket
    # A raised rate keeps bursts of ten seconds' worth (a proxy's users reconnecting at once after a network blip).
    if options.upgrades_per_peer > ServerOptions.upgrades_per_peer:
        options.upgrades_peer_burst = max(options.upgrades_peer_burst, 10 * options.upgrades_per_peer)
    if options.http_per_peer > ServerOptions.http_per_peer:
        options.http_peer_burst = max(options.http_peer_burst, 10 * options.http_per_peer)
    server = VoiceServer(engine, options)
    freeze_startup_objects()  # no 100+ ms garbage-collector pause in the middle of a frame later
    before, after = raise_open_file_limit()  # a server at 1024 open files turns live users away (limits.py)
    if after > before:
        log.info("open files: up to %d (the soft limit was %d)", after, before)

    def ready(port: int) -> None:
        if args.unix_socket:
            print(f"duplex: listening on {args.unix_socket}", file=sys.stderr)
        else:
            print(f"duplex: open {server.page_url} in a browser; Kyutai clients connect to /api/chat"
                  + (" (with the same token)" if args.token else ""), file=sys.stderr)
        if args.lifeline:
            threading.Thread(target=_stop_when_stdin_closes, name="lifeline", daemon=True).start()

    try:
        stopped_by = asyncio.run(server.serve_forever(on_ready=ready))
    except OSError as e:
        raise UsageError(listen_error(args.host, args.port, e)) from None
    except KeyboardInterrupt:  # where signals cannot be handled by the event loop (Windows): no drain
        stopped_by = signal.SIGINT
    if stopped_by == signal.SIGINT:
        print("duplex serve: stopped (Ctrl-C)", file=sys.stderr)
        return 130  # as a shell reports a program ended by Ctrl-C
    # SIGTERM is how service managers (systemd, docker stop, Kubernetes) stop a server: a clean stop, exit 0.
    print(f"duplex serve: stopped ({signal.Signals(stopped_by).name if stopped_by else 'cancelled'})",
          file=sys.stderr)
    return 0


def _stop_when_stdin_closes() -> None:
    """``--lifeline``: the process that started this server ended (or closed our standard input to stop us):
    drain and stop, as on SIGTERM."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def listen_error(host: str, port: int, error: OSError) -> str:
    """One line on why the server cannot listen, with the option that fixes the common case."""
    if error.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the port is already in use (another server?); pick another with --port"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def register(commands) -> None:
    """``duplex serve``."""
    p = commands.add_parser("serve", help="the WebSocket voice server (Kyutai's protocol) with a browser page")
    p.add_argument("--host", default=ServerOptions.host,
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=port, default=ServerOptions.port, help="TCP port (default 8998)")
    p.add_argument("--slots", type=int, default=None,
                   help="concurrent conversations (default: on CUDA 8; on the CPU 2 per core, 1 to 8; every slot "
                        "costs compute each frame, in use or not)")
    add_model_options(p)
    p.add_argument("--voice-prompt-dir", metavar="DIR",
                   help="the voices clients may ask for by file name (?voice_prompt=NATF2.pt, as NVIDIA's server and "
                        "web client do): voice-embedding .pt files made for this model ('duplex voices make') or "
                        "recordings (default: the model's voices: a PersonaPlex repository's voices.tgz, the default "
                        "model's own NVIDIA-named voices)")
    p.add_argument("--token", help="clients must send this (?token=... or Authorization: Bearer ...)")
    p.add_argument("--ssl-cert", metavar="PEM", help="serve https/wss with this certificate")
    p.add_argument("--ssl-key", metavar="PEM", help="private key of --ssl-cert")
    p.add_argument("--origins", nargs="+", metavar="ORIGIN", help="allowed browser origins (default: any)")
    p.add_argument("--max-message-bytes", type=int_in(1024, None, "a size in bytes >= 1024"),
                   default=ServerOptions.max_message_bytes, help="larger messages close the connection")
    p.add_argument("--threads", type=non_negative, default=0,
                   help="CPU threads for the engine (default on the CPU: all cores but one, which is left to the "
                        "network; on CUDA: torch's choice)")
    p.add_argument("--max-waiting", type=non_negative, default=ServerOptions.max_waiting,
                   help="clients that may wait for a free slot when all are taken (default 0: refuse at once)")
    p.add_argument("--drain", type=float_above(0.0, True, "a number of seconds >= 0"), default=None,
                   metavar="SECONDS",
                   help=f"on SIGTERM or Ctrl-C, refuse new clients and let live conversations go on for up to this "
                        f"long before closing them (default {ServerOptions.drain:g}; a second signal closes at once); "
                        f"with --ray, also how long an engine being removed lets its conversations go on (default "
                        f"{CLUSTER_DRAIN:g} there)")
    # Per peer (one IP address, or one IPv6 /64): behind a reverse proxy every client is the proxy, so raise these.
    p.add_argument("--upgrades-per-peer", type=positive_float, default=ServerOptions.upgrades_per_peer,
                   metavar="N", help="conversations a peer may open a second (bursts of "
                   f"{ServerOptions.upgrades_peer_burst:g}); over it: HTTP 429")
    p.add_argument("--http-per-peer", type=positive_float, default=ServerOptions.http_per_peer, metavar="N",
                   help=f"page and /api/stats requests a peer may make a second (bursts of "
                   f"{ServerOptions.http_peer_burst:g}); over it: HTTP 429")
    p.add_argument("--default-adapter", metavar="NAME",
                   help="the --lora adapter a conversation runs when it names none (?adapter=NAME), or none (the base "
                        "model); default: the first --lora")
    p.add_argument("--unix-socket", metavar="PATH",
                   help="listen on this Unix socket instead of --host/--port, for a relay on this machine (a Ray "
                        "Serve replica, a reverse proxy): the peer of a request is its X-Duplex-Peer header")
    p.add_argument("--lifeline", action="store_true", help=argparse.SUPPRESS)  # stop when stdin closes (cluster/)
    ray = p.add_argument_group("more than one engine (Ray Serve; docs/scaling.md)")
    ray.add_argument("--ray", action="store_true",
                     help="serve with Ray Serve: --replicas engines (each a process with --slots slots, on a GPU of "
                          "its own with --device cuda) behind one address; needs pip install -e \".[ray]\"")
    ray.add_argument("--ray-address", metavar="ADDRESS",
                     help="join this Ray cluster ('auto', or the head's host:port from 'ray start --head'; "
                          "default: start a local one on this machine)")
    ray.add_argument("--replicas", type=int_in(1, None, "a number of replicas >= 1"), default=1,
                     help="engines to run (default 1); with --max-replicas, the fewest the autoscaler keeps")
    ray.add_argument("--max-replicas", type=int_in(1, None, "a number of replicas >= 1"), default=None,
                     help="autoscale between --replicas and this many engines on the number of conversations")
    ray.add_argument("--spare-slots", type=non_negative, default=None,
                     help="autoscaling keeps this many slots free for new callers, adding an engine before the last "
                          "one fills (default: 1)")
    ray.add_argument("--downscale-delay", type=float_above(0.0, True, "a number of seconds >= 0"), default=60.0,
                     metavar="SECONDS", help="how long fewer engines must be enough before the autoscaler removes "
                                             "one (default %(default)g)")
    ray.add_argument("--routing", choices=("spread", "pack"), default=None,
                     help="where a new conversation goes among engines with a free slot: spread (the emptiest: the "
                          "lowest latency; the default without autoscaling) or pack (the oldest engine first, so "
                          "that the newest empty first and are the ones the autoscaler removes; the default with it)")
    ray.add_argument("--haproxy", action="store_true",
                     help="Ray's HAProxy ingress instead of its Python proxy: clients reach the replicas through "
                          "HAProxy (fewer milliseconds per message; HAProxy picks the replica with the fewest "
                          "conversations); Ray installs its own HAProxy binary")
    ray.add_argument("--gpus-per-replica", type=float_above(0.0, True, "a number >= 0"), default=None, metavar="N",
                     help="GPUs Ray reserves for each engine (default: 1 with --device cuda, else 0)")
    ray.add_argument("--cpus-per-replica", type=float_above(0.0, True, "a number >= 0"), default=None, metavar="N",
                     help="CPU cores Ray reserves for each engine (default: --threads, else 1)")
    p.set_defaults(run=run_serve, serve_parser=p)  # the parser: --ray passes its options on to each engine

