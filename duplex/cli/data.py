"""``duplex data synth``."""

from __future__ import annotations

import math
import os
import sys
import time

from ..errors import UsageError


def run_synth(args) -> int:
    from ..data.synth.espeak import EspeakError
    from ..data.synth.conversation import DEFAULT_SHARES, SynthOptions, synthesize_corpus

    shares = dict(DEFAULT_SHARES)
    if args.shares:
        shares = {}
        for item in args.shares:
            name, _, value = item.partition("=")
            try:
                shares[name] = float(value)
            except ValueError:
                raise UsageError(f"--shares expects SCENARIO=NUMBER, got {item!r}") from None
    options = SynthOptions(shares=shares, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                           heldout_every=args.heldout_every, noise=args.noise,
                           level_variation=not args.no_level_variation)
    try:
        options.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.hours is not None and not args.hours > 0:
        raise UsageError(f"--hours must be more than 0, got {args.hours}")
    if args.conversations is not None and args.conversations < 1:
        raise UsageError(f"--conversations must be at least 1, got {args.conversations}")
    if os.path.exists(os.path.join(args.out_dir, "manifest.jsonl")):
        # Writing over a corpus would leave the old conversations' files beside the new manifest.
        raise UsageError(f"{args.out_dir} already holds a corpus (manifest.jsonl); choose another folder")
    if args.hours is not None:
        mean = (args.min_seconds + args.max_seconds) / 2 + 2.0  # conversations overshoot their target a little
        conversations = max(1, math.ceil(args.hours * 3600 / mean))
    else:
        conversations = args.conversations or 100
    start = time.time()
    try:
        rows = synthesize_corpus(args.out_dir, conversations, seed=args.seed, options=options,
                                 workers=max(1, args.workers), progress=sys.stderr.isatty())
    except EspeakError as e:
        raise UsageError(str(e)) from None
    hours = sum(r["duration"] for r in rows) / 3600
    heldout = sum(r["split"] == "heldout" for r in rows)
    print(f"{len(rows)} conversation{'' if len(rows) == 1 else 's'} ({heldout} held out), {hours:.2f} h of audio "
          f"in {time.time() - start:.0f} s -> {args.out_dir}", file=sys.stderr)
    return 0
