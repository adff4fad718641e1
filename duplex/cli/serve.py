"""``duplex serve``: the WebSocket voice server on the model options."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
import urllib.parse

import torch

from ..errors import UsageError
from ..runtime.realtime import freeze_startup_objects
from ..serving.options import default_slots, tls_context, usable_cpu_cores
from ..serving.server import ServerOptions, VoiceServer
from .common import add_model_options, build_engine, int_in, non_negative, pick_device, port


def run_serve(args) -> int:
    if args.slots is not None and args.slots < 1:
        raise UsageError("--slots must be at least 1")
    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise UsageError("--ssl-cert and --ssl-key go together")
    if args.token is not None and not args.token.strip():
        raise UsageError("--token is empty (an unset variable?), which would let anyone in; give a secret, or "
                         "leave --token out")
    if args.ssl_cert:  # before minutes of model loading, not after
        tls_context(args.ssl_cert, args.ssl_key)
    check_port_free(args.host, args.port)  # likewise
    if args.slots is None:
        args.slots = default_slots(pick_device(args.device).type, usable_cpu_cores())
        print(f"duplex: {args.slots} slot{'s' if args.slots != 1 else ''} (default for this machine; --slots to "
              "change)", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request is too much
    engine = build_engine(args, args.slots)
    if not (args.lm or args.mimi):
        logging.getLogger("duplex").info("serving the default model (duplex's own small model, trained on synthetic "
                                         "espeak conversations: see README, \"The default model\")")
    options = ServerOptions(host=args.host, port=args.port, token=args.token, origins=args.origins,
                            max_message_bytes=args.max_message_bytes, max_waiting=args.max_waiting,
                            ssl_cert=args.ssl_cert, ssl_key=args.ssl_key, model_name=model_name(args))
    server = VoiceServer(engine, options)
    freeze_startup_objects()  # no 100+ ms garbage-collector pause in the middle of a frame later
    scheme = "https" if args.ssl_cert else "http"

    def ready(port: int) -> None:
        print(f"duplex: open {browser_url(scheme, args.host, port, args.token)} in a browser; Kyutai clients "
              "connect to /api/chat" + (" (with the same token)" if args.token else ""), file=sys.stderr)

    try:
        asyncio.run(server.serve_forever(on_ready=ready))
    except OSError as e:
        raise UsageError(listen_error(args.host, args.port, e)) from None
    except KeyboardInterrupt:
        print("duplex serve: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


def listen_error(host: str, port: int, error: OSError) -> str:
    """One line on why the server cannot listen, with the option that fixes the common case."""
    if error.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the port is already in use (another server?); pick another with --port"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def check_port_free(host: str, port: int) -> None:
    """A port another program listens on is refused here, before the model loads, not minutes later. (The
    server binds as asyncio does, with SO_REUSEADDR, so a port in TIME_WAIT is no obstacle.)"""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: IPv6 only, the IPv4 address is checked apart
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as e:
                raise UsageError(listen_error(host, port, e)) from None


def model_name(args) -> str:
    """What the page shows as the model: the --hf-repo, the --lm file, or the default model."""
    if getattr(args, "hf_repo", None):
        return args.hf_repo
    if args.lm:
        return os.path.basename(os.path.dirname(os.path.abspath(args.lm))) + "/" + os.path.basename(args.lm)
    return "duplex default (small, synthetic conversations)"


def browser_url(scheme: str, host: str, port: int, token=None) -> str:
    """The page's address as the startup line prints it, with the token the page passes on to the WebSocket."""
    host = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    query = "?token=" + urllib.parse.quote(token, safe="") if token else ""
    return f"{scheme}://{host}:{port}/{query}"


def register(commands) -> None:
    """``duplex serve``."""
    p = commands.add_parser("serve", help="the WebSocket voice server (Kyutai's protocol) with a browser page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=port, default=8998, help="TCP port (default 8998)")
    p.add_argument("--slots", type=int, default=None,
                   help="concurrent conversations (default: on CUDA 8; on the CPU 2 per core, 1 to 8; every slot "
                        "costs compute each frame, in use or not)")
    add_model_options(p)
    p.add_argument("--token", help="clients must send this (?token=... or Authorization: Bearer ...)")
    p.add_argument("--ssl-cert", metavar="PEM", help="serve https/wss with this certificate")
    p.add_argument("--ssl-key", metavar="PEM", help="private key of --ssl-cert")
    p.add_argument("--origins", nargs="+", metavar="ORIGIN", help="allowed browser origins (default: any)")
    p.add_argument("--max-message-bytes", type=int_in(1024, None, "a size in bytes >= 1024"), default=1 << 20,
                   help="larger messages close the connection")
    p.add_argument("--threads", type=non_negative, default=0,
                   help="CPU threads for the engine (default: torch's choice; with many sessions on few cores, "
                        "fewer threads leave a core to networking)")
    p.add_argument("--max-waiting", type=non_negative, default=0,
                   help="clients that may wait for a free slot when all are taken (default 0: refuse at once)")
    p.set_defaults(run=run_serve)

