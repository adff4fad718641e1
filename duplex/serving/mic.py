"""The live microphone demo (``duplex mic``): the engine in-process, a full-duplex sound stream at 24 kHz.

The sound card's callback only moves 80 ms frames between two bounded queues (it must never wait); a worker
thread runs the engine. When the engine falls behind, the oldest unprocessed input frames are dropped so the
conversation catches up with real time instead of lagging ever more (an "overrun"); when no reply is ready for
the speaker, silence is played (an "underrun"). Both are counted and shown.

sounddevice (PortAudio) is imported only when a real stream is opened, with a clear message when it is missing.
Tests inject a stream object; a file through the engine, headless, is ``runtime.offline.run_offline``.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TextIO

import numpy as np

from ..errors import SoundDeviceError
from .terminal import LiveText


@dataclass
class MicStats:
    frames: int = 0
    overruns: int = 0  # input frames dropped to catch up
    underruns: int = 0  # speaker frames with no reply ready (silence played)
    device_xruns: int = 0  # over/underflows reported by the sound device
    step_ms: float = 0.0  # last engine step

    def summary(self) -> str:
        """One line, e.g. '250 frames, 0 overruns, 2 underruns, 0 device xruns'."""
        return (f"{self.frames} frames, {self.overruns} overruns, {self.underruns} underruns, {self.device_xruns} "
                "device xruns")


def import_sounddevice():
    try:
        import sounddevice  # noqa: PLC0415  optional: only live sound needs it (and PortAudio)
    except OSError as e:  # the module is there but PortAudio is not
        raise SoundDeviceError(f"PortAudio is not available ({e}); on Debian/Ubuntu: apt install libportaudio2") \
            from None
    except ImportError:
        raise SoundDeviceError("live sound needs the 'sounddevice' package: pip install sounddevice") from None
    return sounddevice


def describe_sound_devices() -> str:
    """What PortAudio sees (sounddevice's table of devices), or a line saying it sees none; a SoundDeviceError
    says what is missing."""
    devices = import_sounddevice().query_devices()
    return str(devices) if len(devices) else "no audio devices found (PortAudio sees none on this machine)"


class MicSession:
    """One conversation between a sound stream and an engine slot."""

    def __init__(self, engine, on_text: Optional[Callable[[str], None]] = None, max_input_frames: int = 3,
                 max_output_frames: int = 6):
        self.engine = engine
        self.slot = engine.open()
        self.frame_size = engine.frame_size
        self.on_text = on_text
        self.max_input_frames = max_input_frames
        self.inputs: queue.Queue = queue.Queue(maxsize=64)  # bounded even if the worker stops
        self.error: Optional[BaseException] = None
        self.outputs: collections.deque = collections.deque(maxlen=max_output_frames)
        self.stats = MicStats()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None

    # Called by the sound device for every 80 ms block: never blocks.
    def callback(self, indata, outdata, frames, time_info, status) -> None:
        if status:
            self.stats.device_xruns += 1
        try:
            self.inputs.put_nowait(np.array(indata[:, 0], dtype=np.float32))
        except queue.Full:
            self.stats.overruns += 1
        try:
            outdata[:, 0] = self.outputs.popleft()
        except IndexError:
            outdata[:, 0] = 0.0
            self.stats.underruns += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.inputs.get(timeout=0.2)
            except queue.Empty:
                continue
            while self.inputs.qsize() >= self.max_input_frames:  # behind: drop the oldest to catch up
                frame = self.inputs.get_nowait()
                self.stats.overruns += 1
            start = time.perf_counter()
            try:
                audio, text = self.engine.step({self.slot: frame})[self.slot]
            except Exception as e:  # e.g. a device delivering blocks of another size: stop and report it
                self.error = e
                self._stop.set()
                return
            self.stats.step_ms = (time.perf_counter() - start) * 1e3
            self.stats.frames += 1
            self.outputs.append(audio)
            if text and self.on_text:
                self.on_text(text)

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="duplex-mic-engine", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker:
            self._worker.join(timeout=30)
        if self._worker is None or not self._worker.is_alive():  # never close a slot the worker still steps
            self.engine.close(self.slot)


def run_live(engine, seconds: Optional[float] = None, input_device=None, output_device=None,
             stream_factory=None, status_every: float = 1.0, out: Optional[TextIO] = None,
             stop: Optional[threading.Event] = None, display: Optional[LiveText] = None) -> MicStats:
    """Talk with the engine through a full-duplex stream until ``seconds`` pass, ``stop`` is set (by another
    thread: a stop button, the end of a test stream) or Ctrl-C. The model's words and a status line every
    ``status_every`` seconds go to ``display`` (default: words on stdout, status on ``out`` or stderr)."""
    display = display or LiveText(status_out=out)
    session = MicSession(engine, on_text=display.write)
    if stream_factory is None:
        sd = import_sounddevice()

        def stream_factory(callback):
            return sd.Stream(samplerate=engine.sample_rate, blocksize=engine.frame_size, channels=1,
                             dtype="float32", device=(input_device, output_device), callback=callback)
    try:
        stream = stream_factory(session.callback)
    except Exception as e:  # PortAudio's errors (no device, unsupported rate) have no common class
        session.stop()
        raise SoundDeviceError(f"cannot open the sound device at {engine.sample_rate} Hz mono ({e}); pick other "
                               "input/output devices") from None
    session.start()
    started = time.perf_counter()
    last = started
    try:
        with stream:
            while ((seconds is None or time.perf_counter() - started < seconds) and session.error is None
                   and not (stop is not None and stop.is_set())):
                time.sleep(0.05)
                if status_every and time.perf_counter() - last >= status_every:
                    last = time.perf_counter()
                    s = session.stats
                    # mic -> speaker: the block being captured, up to 2 queued inputs, the step, the reply queue,
                    # plus the model's own 80 ms acoustic delay
                    latency = 80 * (1 + session.inputs.qsize() + len(session.outputs)) + s.step_ms + 80
                    display.status(f"[latency ~{latency:.0f} ms | step {s.step_ms:.0f} ms | overruns {s.overruns} "
                                   f"| underruns {s.underruns}]")
    except KeyboardInterrupt:
        pass  # the way to end a live conversation
    finally:
        session.stop()
        display.close()
    if session.error is not None:
        raise RuntimeError(f"the engine stopped: {type(session.error).__name__}: {session.error}") \
            from session.error
    return session.stats
