"""A stand-in for the engine in the turn-taking runner's tests (its offline interface, fast), and a small FDB
set for it to run."""

import json

import numpy as np
import soundfile as sf


class FakeEngine:
    """The engine's offline interface (open / step / close, slots): audio and text that depend only on the
    slot's seed and frame, as the real engine's do."""

    frame_size, sample_rate = 1920, 24000

    def __init__(self, slots=2, interrupt_at_step=None):
        self.slots, self.interrupt_at_step = slots, interrupt_at_step
        self.seeds, self.opened, self.steps = {}, [], 0
        self.sampling = []  # each open's sampling changes (temperatures, top-k)

    @property
    def free_slots(self):
        return self.slots - len(self.seeds)

    def open(self, seed, **sampling):
        slot = min(set(range(self.slots)) - set(self.seeds))
        self.seeds[slot] = [seed, 0]
        self.opened.append(seed)
        self.sampling.append(sampling)
        return slot

    def step(self, frames):
        self.steps += 1
        if self.steps == self.interrupt_at_step:
            raise KeyboardInterrupt
        out = {}
        for slot in frames:
            seed, frame = self.seeds[slot]
            self.seeds[slot][1] += 1
            audio = np.full(self.frame_size, 0.001 * (seed % 7), np.float32)
            out[slot] = (audio, f" w{seed}" if frame % 5 == 1 else None)
        return out

    def close(self, slot):
        del self.seeds[slot]


def fdb_set(root, seconds=(1.0, 1.6, 0.8)):
    turn = {"text": "[TURN-TAKING]", "timestamp": [0.3, 0.5]}
    for i, length in enumerate(seconds):
        folder = root / "candor_turn_taking" / str(i)
        folder.mkdir(parents=True)
        sf.write(folder / "input.wav", np.zeros(int(length * 16000), np.float32), 16000)
        (folder / "turn_taking.json").write_text(json.dumps([turn]))
    return root
