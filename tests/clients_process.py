"""Helper for the load test: run N concurrent clients against a server in this separate process, print JSON."""

import asyncio
import json
import os
import sys

import numpy as np

from duplex.client import converse


async def main(url, count, seconds):
    t = np.arange(int(seconds * 24000)) / 24000
    pcm = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    results = await asyncio.gather(*[converse(url, pcm, raw=i % 2 == 1) for i in range(count)],
                                   return_exceptions=True)
    out = []
    for r in results:
        if isinstance(r, BaseException):
            out.append({"exception": repr(r)})
        else:
            out.append({"audio_messages": r.audio_messages, "steady_rate": r.steady_rate(),
                        "errors": r.errors, "samples": int(r.audio.shape[0])})
    print(json.dumps(out))


if __name__ == "__main__":
    # Real clients run on other machines; here they share the server's two cores, so they yield the CPU to the
    # system under test instead of competing with it on equal terms.
    os.nice(10)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
