"""Stream a file through the codec one 80 ms frame at a time, as a live session would.

    python demos/stream_codec.py demos/hello.wav out.wav                 # the codec shipped with duplex
    python demos/stream_codec.py demos/hello.wav out.wav --checkpoint PATH/TO/mimi.safetensors   # Kyutai's Mimi

Prints per-frame encode/decode time; the output is what a listener would hear.
"""

import argparse
import time

import torch

from codec import Mimi, load_shipped_codec
from codec.io.audio import load_audio, save_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--checkpoint", help="a Mimi .safetensors (default: the codec shipped with duplex)")
    parser.add_argument("--config", help="config JSON of --checkpoint (official layout); default: the official Mimi")
    args = parser.parse_args()
    if args.config and not args.checkpoint:
        parser.error("--config describes --checkpoint; the shipped codec brings its own")

    mimi = Mimi.from_checkpoint(args.checkpoint, config=args.config) if args.checkpoint else load_shipped_codec()
    pcm = load_audio(args.input, mimi.sample_rate)
    pcm = torch.nn.functional.pad(pcm, (0, (-pcm.shape[-1]) % mimi.frame_size))[None]  # [1, 1, T]
    stream = mimi.stream(batch_size=1)
    out, times = [], []
    for frame in pcm.split(mimi.frame_size, dim=-1):
        start = time.perf_counter()
        codes = stream.encode(frame)  # [1, 8, 1]
        out.append(stream.decode(codes))  # [1, 1, 1920]
        times.append((time.perf_counter() - start) * 1000)
    save_audio(args.output, torch.cat(out, dim=-1)[0], mimi.sample_rate)
    times.sort()
    print(f"{len(times)} frames, median {times[len(times) // 2]:.1f} ms per 80 ms frame -> {args.output}")


if __name__ == "__main__":
    main()
