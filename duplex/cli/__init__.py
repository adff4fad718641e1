"""The ``duplex`` command line: ``duplex codec ...``, ``duplex bench codec|lm|latency``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .. import __version__


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default is None
                or action.default is False or action.default == argparse.SUPPRESS):
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _int_in(low: int, high: Optional[int], what: str):
    """An argparse type: an integer in [low, high] (no upper bound when high is None), else ``what`` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def _float_above(low: float, inclusive: bool, what: str):
    """An argparse type: a finite number above ``low`` (or equal to it when ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > low or (inclusive and value == low)) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_port = _int_in(0, 65535, "a TCP port (0-65535; 0 picks a free one)")
_non_negative = _int_in(0, None, "an integer >= 0")
_positive = _int_in(1, None, "an integer >= 1")
_positive_float = _float_above(0.0, False, "a number > 0")
_weight = _float_above(0.0, True, "a number >= 0")


def _add_codec_options(p: argparse.ArgumentParser, codebooks: bool = True) -> None:
    p.add_argument("--checkpoint", metavar="PATH",
                   help="Mimi checkpoint (.safetensors); default: $DUPLEX_MIMI, else the codec shipped with duplex")
    p.add_argument("--config", metavar="JSON", help="config of --checkpoint, official layout "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    if codebooks:
        p.add_argument("--num-codebooks", type=int, default=8, metavar="N",
                       help="codebooks to use, 1 to the codec's count (8 for the shipped codec, up to 32 for "
                            "Kyutai's Mimi; default 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--streaming", action="store_true",
                   help="run frame by frame as a live stream does (equal to offline for the first 124 frames)")


def _add_bench_options(p: argparse.ArgumentParser, batch_sizes, what: str = "frames") -> None:
    p.add_argument("--batch-sizes", type=_positive, nargs="+", default=list(batch_sizes), metavar="B",
                   help="batch sizes to time")
    p.add_argument("--frames", type=_positive, default=50, help=f"timed {what} per batch size (default 50)")
    p.add_argument("--warmup", type=_non_negative, default=5, help=f"untimed {what} first (default 5)")
    p.add_argument("--threads", type=_non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lm", metavar="PATH", help="Moshi LM checkpoint (default: the shipped default model)")
    p.add_argument("--mimi", metavar="PATH", help="Mimi checkpoint (with --lm)")
    p.add_argument("--tokenizer", metavar="PATH", help="SentencePiece text tokenizer (with --lm)")
    p.add_argument("--lm-config", metavar="JSON", help="config of --lm (default: Moshi 7B)")
    p.add_argument("--mimi-config", metavar="JSON", help="config of --mimi "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="LM dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the frame step eagerly on CUDA")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="duplex", description="Full-duplex speech dialogue engine (Moshi/Mimi).")
    parser.add_argument("--version", action="version", version=f"duplex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    codec = commands.add_parser("codec", help="encode / decode audio with the Mimi codec")
    codec_commands = codec.add_subparsers(dest="codec_command", required=True, metavar="ACTION")
    p = codec_commands.add_parser("encode", help="audio file -> codes (.safetensors)")
    p.add_argument("input", help="audio file (any format and rate soundfile reads; mixed to mono)")
    p.add_argument("output", help="codes file to write (.safetensors)")
    _add_codec_options(p)
    p.set_defaults(func="duplex.cli.codec:run_encode")
    p = codec_commands.add_parser("decode", help="codes (.safetensors) -> 24 kHz audio file")
    p.add_argument("input", help="codes file written by 'duplex codec encode'")
    p.add_argument("output", help="audio file to write (format from the extension: .wav, .flac, .ogg)")
    _add_codec_options(p, codebooks=False)
    p.set_defaults(func="duplex.cli.codec:run_decode")
    p = codec_commands.add_parser("roundtrip", help="audio file -> codes -> 24 kHz audio file")
    p.add_argument("input", help="audio file (any format and rate; mixed to mono)")
    p.add_argument("output", help="audio file to write")
    _add_codec_options(p)
    p.set_defaults(func="duplex.cli.codec:run_roundtrip")

    p = commands.add_parser("serve", help="the WebSocket voice server (Kyutai's protocol) with a browser page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=_port, default=8998, help="TCP port (default 8998)")
    p.add_argument("--slots", type=int, default=None,
                   help="concurrent conversations (default: 1 on CPU, 8 on CUDA; every slot costs compute each "
                        "frame, in use or not)")
    _add_model_options(p)
    p.add_argument("--token", help="clients must send this (?token=... or Authorization: Bearer ...)")
    p.add_argument("--ssl-cert", metavar="PEM", help="serve https/wss with this certificate")
    p.add_argument("--ssl-key", metavar="PEM", help="private key of --ssl-cert")
    p.add_argument("--origins", nargs="+", metavar="ORIGIN", help="allowed browser origins (default: any)")
    p.add_argument("--max-message-bytes", type=_int_in(1024, None, "a size in bytes >= 1024"), default=1 << 20, help="larger messages close the connection")
    p.add_argument("--threads", type=_non_negative, default=0,
                   help="CPU threads for the engine (default: torch's choice; with many sessions on few cores, "
                        "fewer threads leave a core to networking)")
    p.add_argument("--max-waiting", type=_non_negative, default=0,
                   help="clients that may wait for a free slot when all are taken (default 0: refuse at once)")
    p.set_defaults(func="duplex.cli.serve:run_serve")

    p = commands.add_parser("client", help="talk to a server: audio file in and reply file out, or mic <-> speaker")
    p.add_argument("input", nargs="?", help="audio file to send (any format and rate; mixed to mono, resampled); "
                   "omit both files to talk through the microphone and speakers")
    p.add_argument("output", nargs="?", help="reply audio file to write (same length as the input, 24 kHz)")
    p.add_argument("--seconds", type=_positive_float, help="live mode: stop after this long (default: Ctrl-C)")
    p.add_argument("--input-device", help="live mode: sound input device (index or name)")
    p.add_argument("--output-device", help="live mode: sound output device (index or name)")
    p.add_argument("--url", default="ws://127.0.0.1:8998", help="server address (default ws://127.0.0.1:8998)")
    p.add_argument("--token", help="the server's token, if it requires one")
    p.add_argument("--raw", action="store_true", help="use the raw PCM16 mode instead of Ogg/Opus")
    p.set_defaults(func="duplex.cli.serve:run_client")

    p = commands.add_parser("mic", help="live demo: talk with the engine through your microphone and speakers")
    _add_model_options(p)
    p.add_argument("--input-device", help="sound input device (index or name; see --list-devices)")
    p.add_argument("--output-device", help="sound output device (index or name)")
    p.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    p.add_argument("--seconds", type=_positive_float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--input-file", metavar="AUDIO", help="headless: read the microphone from this file")
    p.add_argument("--output-file", metavar="WAV", help="headless: write the replies here (with --input-file)")
    p.add_argument("--realtime", action="store_true", help="headless: pace the file at 80 ms per frame")
    p.add_argument("--threads", type=_non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func="duplex.cli.serve:run_mic")

    data = commands.add_parser("data", help="training data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_commands.add_parser("synth", help="synthesize a two-speaker conversation corpus with espeak-ng")
    p.add_argument("out_dir", help="folder to write train/, heldout/ and manifest.jsonl into")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--conversations", type=int, help="number of conversations (default 100)")
    size.add_argument("--hours", type=float, help="total audio to synthesize instead")
    p.add_argument("--seed", type=int, default=0, help="same seed, same corpus")
    p.add_argument("--shares", nargs="+", metavar="SCENARIO=SHARE",
                   help="scenario shares (default smooth=0.35 pause=0.15 interrupt=0.15 backchannel=0.15 "
                        "silence=0.2)")
    p.add_argument("--heldout-every", type=_non_negative, default=20, help="hold out every Nth conversation (0: none)")
    p.add_argument("--min-seconds", type=float, default=20.0, help="shortest conversation")
    p.add_argument("--max-seconds", type=float, default=40.0, help="longest conversation")
    p.add_argument("--noise", action="store_true", help="add background noise at 20-40 dB SNR")
    p.add_argument("--no-level-variation", action="store_true", help="keep every utterance at espeak's level")
    p.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.set_defaults(func="duplex.cli.data:run_synth")

    train = commands.add_parser("train", help="train models on the synthetic corpus")
    train_commands = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    p = train_commands.add_parser("codec", help="train a Mimi-architecture codec")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--out", required=True, help="run folder: codec.safetensors, config.json, trainer.pt, log.jsonl")
    p.add_argument("--config", default="small", help="small (default), official, or a config JSON (official layout)")
    p.add_argument("--steps", type=_positive, default=2000, help="optimiser steps the run is planned for")
    p.add_argument("--batch-size", type=_positive, default=8, help="crops per step")
    p.add_argument("--segment-seconds", type=_positive_float, default=2.0,
                   help="length of each crop, rounded to whole 80 ms frames")
    p.add_argument("--lr", type=_positive_float, default=3e-4, help="peak learning rate of AdamW")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine",
                   help="cosine: decay to 10%% of --lr at --steps (default)")
    p.add_argument("--linear-mel-weight", type=_weight, default=0.0,
                   help="weight of an L1 loss on linear mel magnitudes beside the log-mel loss")
    p.add_argument("--stop-at", type=_positive, default=None, metavar="STEP",
                   help="end this run at STEP (saved; --resume continues), the schedule still planned for --steps")
    p.add_argument("--adversarial-weight", type=_weight, default=0.0,
                   help="weight of the multi-period discriminator's hinge loss (0: no discriminator)")
    p.add_argument("--feature-matching-weight", type=_weight, default=0.0,
                   help="weight of the discriminator feature-matching loss (0: off)")
    p.add_argument("--crops", choices=["speech", "any"], default="speech",
                   help="speech: every training crop contains speech (default); any: uniform crops")
    p.add_argument("--max-codebooks", type=_positive, default=8, help="quantizer dropout trains 1..N codebooks")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--save-every", type=_positive, default=250, help="checkpoint every N steps (and at the end)")
    p.add_argument("--eval-every", type=_non_negative, default=100, help="held-out losses every N steps (0: never)")
    p.add_argument("--threads", type=_non_negative, default=0, help="torch CPU threads (0: torch's choice)")
    p.set_defaults(func="duplex.cli.train:run_train_codec")

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bench_commands.add_parser("codec", help="streaming codec encode + decode time per 80 ms frame")
    p.add_argument("--checkpoint", metavar="PATH", help="time real weights (default: random weights)")
    p.add_argument("--config", metavar="JSON", help="codec config "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    p.add_argument("--num-codebooks", type=int, default=8, metavar="N", help="codebooks encoded and decoded")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_bench_options(p, [1, 8])
    p.set_defaults(func="duplex.cli.bench:run_bench_codec")
    p = bench_commands.add_parser("lm", help="LM generator step time per 80 ms frame (temporal + depth + sampling)")
    p.add_argument("--config", default="small",
                   help="preset (small, moshi_7b) or a JSON config in the official keyword layout (default small)")
    p.add_argument("--checkpoint", metavar="PATH", help="time real weights (default: random weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights and "
                   "activations")
    _add_bench_options(p, [1, 8], what="steps")
    p.set_defaults(func="duplex.cli.bench:run_bench_lm")
    p = bench_commands.add_parser("latency", help="whole-engine ms per frame by stage and batch size (JSON + plot)")
    p.add_argument("--model", default="default", help="default (shipped small model), default-official-codec (its "
                   "LM with the official Mimi architecture) or moshi_7b (7B shapes, random weights); or pass --lm "
                   "and --mimi")
    _add_model_options(p)
    _add_bench_options(p, [1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=["eager", "graphs"], choices=["eager", "graphs"],
                   help="graphs only on CUDA")
    p.add_argument("--plot", metavar="PNG", help="draw ms/frame against batch size here")
    p.set_defaults(func="duplex.cli.bench:run_bench_latency")
    p = bench_commands.add_parser("serve", help="N time-synchronous clients x S seconds against a voice server: "
                                  "reply rate, late and lost replies, deadline misses, step time")
    p.add_argument("--clients", type=_positive, default=4, help="concurrent clients, one process each")
    p.add_argument("--seconds", type=_positive_float, default=20.0, help="how long every client talks")
    p.add_argument("--format", dest="formats", choices=["mixed", "opus", "pcm16"], default="mixed",
                   help="client audio: Ogg/Opus (Kyutai's), raw pcm16, or mixed (every other client)")
    p.add_argument("--url", help="a running server to load (default: start one here on the model options)")
    p.add_argument("--token", help="the server's token, if it requires one")
    p.add_argument("--slots", type=_positive, help="slots of the server started here (default: --clients)")
    p.add_argument("--threads", type=_non_negative, default=0,
                   help="CPU threads of the server started here (default: torch's choice)")
    p.add_argument("--client-nice", type=_int_in(0, 19, "a niceness 0-19"), default=10,
                   help="niceness of the client processes: real clients run elsewhere, so on the server's machine "
                        "they yield the CPU to it (0: equal terms)")
    p.add_argument("--fuzz", type=_positive, metavar="N",
                   help="instead of the load: N hostile messages in families (malformed, oversized, Opus bombs, "
                        "floods, connection churn, a jammed queue, HTTP garbage), a health check after each")
    p.add_argument("--seed", type=int, default=0, help="with --fuzz: the same seed sends the same messages")
    _add_model_options(p)
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.set_defaults(func="duplex.cli.bench:run_bench_serve")
    p = bench_commands.add_parser("codec-quality", help="reconstruction quality on a corpus split (JSON + PNG)")
    p.add_argument("--data", required=True, help="corpus folder made by 'duplex data synth'")
    p.add_argument("--split", default="heldout", help="corpus split to measure (heldout or train)")
    p.add_argument("--checkpoint", metavar="PATH", help="codec .safetensors (default: the codec shipped with duplex)")
    p.add_argument("--config", metavar="JSON", help="its config "
                   "(default: NAME.json beside it, or its training run's config.json, else official Mimi)")
    p.add_argument("--num-codebooks", type=int, default=8, help="codebooks of the reconstruction")
    p.add_argument("--max-clips", type=_positive, default=40, help="channels to evaluate at most (default 40)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    p.add_argument("--plot", metavar="PNG", help="spectrograms of original vs reconstruction")
    p.set_defaults(func="duplex.cli.bench:run_bench_codec_quality")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args.func.split(":")
    import importlib

    from codec import CheckpointError, ConfigError
    from codec.io.audio import AudioError, DependencyError

    from ..errors import UsageError
    from ..model.config import LMConfigError
    from ..model.tokenizer import TokenizerError

    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except (UsageError, CheckpointError, ConfigError, LMConfigError, TokenizerError, AudioError, DependencyError,
            ValueError, TypeError) as e:
        if os.environ.get("DUPLEX_DEBUG"):
            raise
        print(f"duplex: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
