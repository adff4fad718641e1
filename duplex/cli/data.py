"""``duplex data synth | encode``: the synthetic two-speaker conversation corpus, and its codes for LM training.

The synthesis options' defaults are the library's (``SynthOptions``, ``synthesize_corpus``), read when the
command runs (``cli/options.py``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..data.encode import ConsoleProgress, encode_corpus, format_encoded
from ..data.synth.conversation import (
    MIXES,
    USER_NOISE_SNR,
    SynthOptions,
    conversations_for_hours,
    format_corpus,
    synthesize_corpus,
)
from ..errors import UsageError
from .codec import load_codec
from .common import add_codec_options, non_negative, positive, positive_float
from .options import OptionsParser, dataclass_defaults, signature_defaults


def _shares(items) -> dict:
    shares = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            shares[name] = float(value)
        except ValueError:
            raise UsageError(f"--shares expects SCENARIO=NUMBER, got {item!r}") from None
    return shares


def run_synth(args) -> int:
    options = SynthOptions(min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                           heldout_every=args.heldout_every, noise=args.noise,
                           level_variation=not args.no_level_variation, assistant_voice=args.assistant_voice,
                           assistant_rate=args.assistant_rate, assistant_pitch=args.assistant_pitch,
                           greeting=args.greeting, greeting_share=args.greeting_share, mix=args.mix,
                           opening_greeting=args.opening_greeting,
                           clean_user_share=1.0 if args.clean_user_channel else args.clean_user_share,
                           user_noise_snr=tuple(args.user_noise_snr), user_room=not args.no_user_room)
    if args.shares:
        options.shares = _shares(args.shares)
    conversations = args.conversations if args.hours is None else conversations_for_hours(args.hours, options)
    start = time.time()
    try:
        rows = synthesize_corpus(args.out_dir, conversations, seed=args.seed, options=options,
                                 workers=args.workers, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"\ninterrupted: the conversations made so far were removed ({args.out_dir} holds nothing of this run)",
              file=sys.stderr)
        raise
    print(format_corpus(rows, time.time() - start, args.out_dir), file=sys.stderr)
    return 0


def run_encode(args) -> int:
    mimi = load_codec(args)
    start = time.time()
    with ConsoleProgress() as progress:
        encoded, skipped = encode_corpus(Path(args.corpus), mimi, progress=progress)
    print(format_encoded(encoded, skipped, time.time() - start, mimi.num_codebooks), file=sys.stderr)
    return 0


def _synth_defaults() -> dict:
    defaults = {**signature_defaults(synthesize_corpus), **dataclass_defaults(SynthOptions)}
    defaults["shares"] = None  # the mix's (--mix)
    del defaults["workers"]  # the command's default is every core, the library's one process
    return defaults


def register(commands) -> None:
    """``duplex data synth | encode``."""
    data = commands.add_parser("data", help="training data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION",
                                        parser_class=OptionsParser)
    p = data_commands.add_parser("synth", help="synthesize a two-speaker conversation corpus with espeak-ng",
                                 defaults=_synth_defaults)
    p.add_argument("out_dir", help="folder to write train/, heldout/ and manifest.jsonl into (new, or holding no "
                   "corpus; on failure or Ctrl-C what was written is removed)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--conversations", type=positive, default=100, help="number of conversations")
    size.add_argument("--hours", type=positive_float, help="total audio to synthesize instead")
    p.add_argument("--seed", type=int, help="same seed, same corpus")
    mixes = "; ".join(f"{name}: {' '.join(f'{k}={v}' for k, v in shares.items())}" for name, shares in MIXES.items())
    p.add_argument("--mix", choices=sorted(MIXES), help="the scenarios and their content: v1, the shipped default "
                   "model's corpus; v2, the second default model's (greeting openings, answers restated as sentences, "
                   "open-clause pauses with slow trailing words, barge-ins anywhere in an answer, the user's "
                   "backchannels, a larger grammar, more user voices, room and noise on the user channel: "
                   f"docs/training.md). Their shares: {mixes}")
    p.add_argument("--shares", nargs="+", metavar="SCENARIO=SHARE", help="scenario shares (default: the mix's)")
    p.add_argument("--opening-greeting", type=float, help="with --mix v2: the share of conversations the user opens "
                   "with a greeting")
    p.add_argument("--heldout-every", type=non_negative, help="hold out every Nth conversation (0: none)")
    p.add_argument("--min-seconds", type=float, help="shortest conversation")
    p.add_argument("--max-seconds", type=float, help="longest conversation")
    p.add_argument("--noise", action="store_true", help="add background noise at 20-40 dB SNR")
    p.add_argument("--no-level-variation", action="store_true", help="keep every utterance at espeak's level")
    clean = p.add_mutually_exclusive_group()
    clean.add_argument("--clean-user-channel", action="store_true", help="with --mix v2: no room, background noise "
                       "or microphone gain on the user channel; the same conversations otherwise (an ablation of "
                       "the sound)")
    clean.add_argument("--clean-user-share", type=float, default=0.0, metavar="SHARE",
                       help="with --mix v2: the share (0-1) of conversations with a clean user channel, the others "
                       "with room, noise and gain; the same conversations at any share")
    p.add_argument("--user-noise-snr", type=float, nargs=2, default=USER_NOISE_SNR, metavar=("LOW", "HIGH"),
                   help="with --mix v2: the user channel's background noise this many dB under the speech, drawn per "
                   "conversation (default %(default)s); the same conversations at any range")
    p.add_argument("--no-user-room", action="store_true", help="with --mix v2: no room reverb on the user channel "
                   "(its noise and gain kept); the same conversations otherwise")
    p.add_argument("--workers", type=positive, default=os.cpu_count() or 1, help="processes (default: all cores)")
    persona = p.add_argument_group("a persona (the data of a LoRA adapter: demos/lora-persona)")
    persona.add_argument("--assistant-voice", metavar="VOICE[+VARIANT]", help="one espeak-ng voice for every "
                         "assistant utterance, e.g. en-us-nyc+Annie ('espeak-ng --voices=en', 'espeak-ng "
                         "--voices=variant') (default: a random voice per conversation)")
    persona.add_argument("--assistant-rate", type=int, help="its rate in words per minute, with --assistant-voice")
    persona.add_argument("--assistant-pitch", type=int, help="its pitch (0-100), with --assistant-voice")
    persona.add_argument("--greeting", metavar="TEXT", help="the assistant opens conversations with this into a "
                         "quiet line (default: no greeting; the corpus is then as without these options)")
    persona.add_argument("--greeting-share", type=float, help="with --greeting: the share of conversations that "
                         "open with it; the others open with the user speaking at once, and no greeting")
    p.set_defaults(run=run_synth)
    p = data_commands.add_parser("encode", help="cache the codec's codes of both channels of every conversation "
                                 "(resumable), for LM training")
    p.add_argument("corpus", help="a corpus made by 'duplex data synth', or any folder in Kyutai's fine-tuning "
                   "layout (*.jsonl manifests of {\"path\", \"duration\"}, stereo WAVs)")
    add_codec_options(p, streaming=False)
    p.set_defaults(run=run_encode)
