"""``duplex serve`` and ``duplex client``."""

from __future__ import annotations

import asyncio
import logging
import sys

import torch

from ..runtime.clock import freeze_startup_objects
from ..errors import UsageError
from .codec import check_output_path, pick_device


def build_engine(args, slots: int):
    from ..runtime.engine import Engine
    from .model_paths import mimi_config_for

    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    graphs = not args.no_cuda_graphs
    if args.lm or args.mimi:
        if not (args.lm and args.mimi):
            raise UsageError("pass both --lm and --mimi (and usually --tokenizer) to serve your own checkpoints")
        return Engine.from_checkpoints(lm=args.lm, mimi=args.mimi, tokenizer=args.tokenizer, slots=slots,
                                       device=device, dtype=dtype, cuda_graphs=graphs, lm_config=args.lm_config,
                                       mimi_config=mimi_config_for(args.mimi, args.mimi_config))
    return Engine.default(slots=slots, device=device, dtype=dtype, cuda_graphs=graphs)


def run_serve(args) -> int:
    from ..serving.server import ServerOptions, VoiceServer

    if args.slots is None:
        args.slots = 8 if pick_device(args.device).type == "cuda" else 1
    if args.slots < 1:
        raise UsageError("--slots must be at least 1")
    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise UsageError("--ssl-cert and --ssl-key go together")
    if args.token is not None and not args.token.strip():
        raise UsageError("--token is empty (an unset variable?), which would let anyone in; give a secret, or "
                         "leave --token out")
    if args.ssl_cert:  # before minutes of model loading, not after
        from ..serving.server import tls_context

        try:
            tls_context(args.ssl_cert, args.ssl_key)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request is too much
    engine = build_engine(args, args.slots)
    if not (args.lm or args.mimi):
        logging.getLogger("duplex").info("serving the default model (random weights until trained weights ship)")
    options = ServerOptions(host=args.host, port=args.port, token=args.token, origins=args.origins,
                            max_message_bytes=args.max_message_bytes, max_waiting=args.max_waiting,
                            ssl_cert=args.ssl_cert, ssl_key=args.ssl_key)
    server = VoiceServer(engine, options)
    freeze_startup_objects()  # no 100+ ms garbage-collector pause in the middle of a frame later
    scheme = "https" if args.ssl_cert else "http"

    def ready(port: int) -> None:
        host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
        print(f"duplex: open {scheme}://{host}:{port}/ in a browser; Kyutai clients connect to /api/chat",
              file=sys.stderr)

    try:
        asyncio.run(server.serve_forever(on_ready=ready))
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    return 0


def run_client(args) -> int:
    from codec.io.audio import load_audio, save_audio

    from ..serving.client import ClientError, ClientResult, converse, talk

    def show(piece: str) -> None:
        print(piece, end="", flush=True)

    def notice(text: str) -> None:
        print(f"server: {text}", file=sys.stderr)

    if bool(args.input) != bool(args.output):
        raise UsageError("give both an input and an output file, or neither (microphone <-> speaker)")
    if not args.input:
        try:
            stats = asyncio.run(talk(args.url, raw=args.raw, token=args.token, seconds=args.seconds, on_text=show,
                                     input_device=_device(args.input_device),
                                     output_device=_device(args.output_device), on_notice=notice))
        except KeyboardInterrupt:
            return 0
        except ClientError as e:
            raise UsageError(f"the server refused the session: {e}") from None
        except (OSError, asyncio.TimeoutError) as e:
            raise UsageError(f"cannot reach {args.url}: {e or type(e).__name__}") from None
        except RuntimeError as e:  # no microphone, no PortAudio
            raise UsageError(str(e)) from None
        print(f"\n{stats.sent} frames sent, {stats.received} received, {stats.underruns} underruns"
              + (f", {stats.dropped} microphone blocks dropped" if stats.dropped else ""), file=sys.stderr)
        for problem in stats.errors:
            print(f"note: {problem}", file=sys.stderr)
        return 0
    check_output_path(args.output, audio=True)
    pcm = load_audio(args.input, 24000)[0].numpy()

    # Whatever arrived is written, also when the server ends the session early or on Ctrl-C.
    result = ClientResult()
    interrupted = False
    try:
        asyncio.run(converse(args.url, pcm, raw=args.raw, token=args.token, on_text=show, result=result,
                             on_notice=notice))
    except KeyboardInterrupt:
        interrupted = True
        result.finish(len(pcm))
        result.errors.append("interrupted (Ctrl-C): the reply is cut there")
    except ClientError as e:
        raise UsageError(f"the server refused the session: {e}") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise UsageError(f"cannot reach {args.url}: {e or type(e).__name__}") from None
    print(file=sys.stderr)
    save_audio(args.output, torch.from_numpy(result.audio), 24000)
    print(f"{args.input}: {len(pcm) / 24000:.2f} s sent, {result.audio_messages} audio messages received "
          f"-> {args.output}", file=sys.stderr)
    for problem in result.errors:
        print(f"note: {problem}", file=sys.stderr)
    # A cut-off reply is still written, but the exit status tells a script it is not whole.
    return 130 if interrupted else (0 if result.complete else 1)


def _device(value):
    return int(value) if value is not None and value.isdigit() else value


def run_mic(args) -> int:
    from ..serving import mic

    if args.list_devices:
        try:
            devices = mic.import_sounddevice().query_devices()
        except RuntimeError as e:
            raise UsageError(str(e)) from None
        print(devices if len(devices) else "no audio devices found (PortAudio sees none on this machine)")
        return 0
    if bool(args.input_file) != bool(args.output_file):
        raise UsageError("--input-file and --output-file go together")
    if args.output_file:
        check_output_path(args.output_file, audio=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args, slots=1)

    def show(piece: str) -> None:
        print(piece, end="", flush=True)

    if args.input_file:
        from codec.io.audio import load_audio, save_audio

        pcm = load_audio(args.input_file, engine.sample_rate)[0].numpy()
        reply = mic.run_files(engine, pcm, realtime=args.realtime, on_text=show)
        save_audio(args.output_file, torch.from_numpy(reply), engine.sample_rate)
        print(f"\n{args.input_file}: {len(pcm) / engine.sample_rate:.2f} s -> {args.output_file}", file=sys.stderr)
        return 0
    print("duplex: talking (Ctrl-C to stop); the default model has random weights until trained weights ship",
          file=sys.stderr)
    freeze_startup_objects()
    try:
        stats = mic.run_live(engine, seconds=args.seconds, input_device=_device(args.input_device),
                             output_device=_device(args.output_device))
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    print(f"{stats.frames} frames, {stats.overruns} overruns, {stats.underruns} underruns, "
          f"{stats.device_xruns} device xruns", file=sys.stderr)
    return 0
