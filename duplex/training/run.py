"""A training run's folder: what every trainer (the codec's and the LM's) needs around its loop.

* It is never overwritten by accident: a folder that holds a run is refused unless the run is resumed, and
  resuming insists there is one (a forgotten ``--resume`` would lose hours of training).
* ``log.jsonl`` gets one JSON record per step, flushed (followable with ``tail -f``); on resume, what was logged
  after the last checkpoint (the steps a crash lost) is dropped, since they are redone.
* Progress: a bar on a terminal, a line every so often otherwise.
* Ctrl-C ends the run at the next step boundary, so what is saved is a whole step; a second Ctrl-C stops at once,
  or during a save (``saving``) as soon as the save is written: a run stopped halfway through a save is worse off
  than one stopped a few seconds later.
* Checkpoints are sets of two files, weights (safetensors) and the trainer's state, both written whole before
  either is renamed into place and both stamped with their step, so a save cut short leaves the previous set, and
  one cut between the two renames is told apart on resume (``save_checkpoint`` / ``load_checkpoint``; the codec
  trainer writes the same sets itself).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

from tqdm import tqdm

from codec.io.checkpoint import read_checkpoint_set, write_checkpoint_set

from ..errors import UsageError

LOG = "log.jsonl"


def _logged_step(line: str) -> float:
    """The step of a log line; infinity for a line that is not a whole record (a crash can cut the last one)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, TypeError, KeyError):
        return float("inf")


def _heldout_line(step: int, figures: dict) -> str:
    return f"step {step} held-out: " + " ".join(f"{k} {v:.4f}" for k, v in figures.items())


class RunFolder:
    """``marker``: the file that says the folder holds a run (the trainer's state, written at each checkpoint)."""

    def __init__(self, path: str, resume: bool, marker: str = "trainer.pt"):
        self.path, self.resume, self.marker = path, resume, marker
        existing = os.path.exists(self.file(marker))
        if resume and not existing:
            raise UsageError(f"{path} holds no run to continue (no {marker})")
        if existing and not resume:
            raise UsageError(f"{path} already holds a training run ({marker}): resume it, or train into another "
                             "folder")
        self._log = None
        self._stop = threading.Event()
        self._interrupted = False  # the stop came from Ctrl-C (not from request_stop)
        self._previous_handler = None
        self._saving = 0  # how many ``saving`` blocks are open (a trainer's save holds save_checkpoint's)
        self._deferred = False  # a second Ctrl-C came during a save: raised when the save ends

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ------------------------------------------------------------------------------------------------- log
    def open_log(self, step: int) -> None:
        """Start logging after ``step`` (0 for a new run: the log starts afresh, also over one a run that crashed
        before its first checkpoint left behind)."""
        os.makedirs(self.path, exist_ok=True)
        path = self.file(LOG)
        if self.resume and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                kept = [line for line in f if _logged_step(line) <= step]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(kept)
        self._log = open(path, "a" if self.resume else "w", encoding="utf-8")

    def log(self, record: dict) -> None:
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    # ----------------------------------------------------------------------------------------- checkpoints
    @contextmanager
    def saving(self):
        """A save in progress: a second Ctrl-C in it stops the run once the block ends, not halfway through."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
        # not in the finally: an error of the save itself is what to report, not the Ctrl-C that came meanwhile
        if not self._saving and self._deferred:
            self._deferred = False
            raise KeyboardInterrupt

    def save_checkpoint(self, weights_name: str, weights, state: dict, step: int) -> None:
        with self.saving():
            write_checkpoint_set(self.path, weights_name, weights, state, step, state_name=self.marker)

    def load_checkpoint(self, weights_name: str) -> "tuple[dict, dict]":
        """(weights, state); a CheckpointError names a missing or broken file or a pair from two steps."""
        return read_checkpoint_set(self.path, weights_name, state_name=self.marker)

    # -------------------------------------------------------------------------------------------- progress
    def progress(self, total: int, initial: int, every: int = 50):
        """A callable ``update(step, heldout=None, **figures)``: a tqdm bar on a terminal, else a line every
        ``every`` steps and at ``total``; held-out figures, when a step has them, get a line of their own."""
        if sys.stderr.isatty():
            bar = tqdm(total=total, initial=initial, unit="step")

            def update(step: int, heldout: "dict | None" = None, **figures) -> None:
                if heldout:
                    bar.write(_heldout_line(step, heldout), file=sys.stderr)
                bar.update(step - bar.n)
                bar.set_postfix({k: f"{v:.3f}" for k, v in figures.items()})
                if step >= total:
                    bar.close()
        else:
            started = time.monotonic()

            def update(step: int, heldout: "dict | None" = None, **figures) -> None:
                if step % every == 0 or step >= total:
                    shown = " ".join(f"{k} {v:.4f}" for k, v in figures.items())
                    done = step - initial
                    # never negative: a step past the planned total (or a clock step back) has nothing left
                    eta = max(0.0, (time.monotonic() - started) / done * (total - step)) if done > 0 else 0.0
                    print(f"step {step}/{total}: {shown} (ETA {int(eta // 60)} min {int(eta % 60)} s)",
                          file=sys.stderr)
                if heldout:
                    print(_heldout_line(step, heldout), file=sys.stderr)
        return update

    # ---------------------------------------------------------------------------------------------- Ctrl-C
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> "RunFolder":
        """Ctrl-C (SIGINT) asks the loop to stop at the next step boundary; a second one stops at once, or during
        a save as soon as it is written."""
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self._stop.is_set():
                    if self._saving:
                        if not self._deferred:
                            print("\nstopping as soon as the checkpoint is written", file=sys.stderr)
                        self._deferred = True
                        return
                    raise KeyboardInterrupt
                self._stop.set()
                self._interrupted = True
                print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def raise_if_interrupted(self, step: int) -> None:
        """After a loop that Ctrl-C stopped (and that saved its last step): say what was kept, then let the
        interrupt go on (the command line exits 130)."""
        if self._interrupted:
            print(f"interrupted: stopped at step {step}, saved in {self.path} (resuming continues from there)",
                  file=sys.stderr)
            raise KeyboardInterrupt

    def request_stop(self) -> None:
        """What Ctrl-C does (for callers that stop a run themselves)."""
        self._stop.set()
