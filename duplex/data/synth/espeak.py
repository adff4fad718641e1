"""Speech synthesis with word timestamps through libespeak-ng (Debian package espeak-ng).

The espeak-ng command line cannot report where words fall in the audio; its library can: in synchronous mode
the synthesis callback receives the samples together with a WORD event carrying the sample position of every
word. This module binds the few library functions needed with ctypes. One process holds one synthesizer (the
library keeps global state), so corpus generation runs in worker processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ...errors import EspeakError

_OUTPUT_SYNCHRONOUS = 2
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_PUNCTUATION = " ,.?!;:\""



class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Word:
    text: str
    start: float  # seconds
    end: float


@dataclass
class Speech:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    words: List[Word]


# libespeak-ng has one synthesis callback for the whole process. Each synthesizer registers its own before it
# speaks, and the one registered is kept alive here: a synthesizer that is garbage-collected (a finished corpus
# run's) must not leave libespeak calling freed memory when another synthesizer speaks (a segmentation fault).
_REGISTERED = None


def _register(lib, callback) -> None:
    global _REGISTERED
    if _REGISTERED is not callback:
        lib.espeak_SetSynthCallback(callback)
        _REGISTERED = callback


class Synthesizer:
    def __init__(self):
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(path)
        except OSError:
            raise EspeakError("libespeak-ng is not installed (Debian/Ubuntu: apt install espeak-ng)") from None
        self.sample_rate = self._lib.espeak_Initialize(_OUTPUT_SYNCHRONOUS, 0, None, 0)
        if self.sample_rate <= 0:
            raise EspeakError("espeak-ng failed to initialise (is espeak-ng-data installed?)")
        self._chunks: List[np.ndarray] = []
        self._events: List[tuple] = []
        self._callback = _CALLBACK(self._receive)

    def _receive(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_WORD:
                self._events.append((e.text_position, e.length, e.sample))
            i += 1
        return 0

    def speak(self, text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50,
              pitch_range: Optional[int] = None) -> Speech:
        """Synthesize ``text``; words carry start/end times in seconds (speech onset to last voiced sample)."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        self._lib.espeak_SetParameter(_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        if pitch_range is not None:
            self._lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
        self._chunks, self._events = [], []
        _register(self._lib, self._callback)
        data = text.encode("utf-8")
        if self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise EspeakError(f"espeak-ng could not synthesize {text!r}")
        self._lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return Speech(audio, self.sample_rate, self._words(data, audio))

    def _words(self, data: bytes, audio: np.ndarray) -> List[Word]:
        """One timed word per WORD event. The event's text position is only a pointer into the input (espeak
        reports it one character early after a sentence-internal period, gives "o'clock" a length of 1, and sends
        no event at all for some words, e.g. "are" in "there are"), so each event takes the whitespace token that
        contains or follows its position, and tokens without an event join the timed word before them."""
        rate = self.sample_rate
        loud = np.abs(audio) > 0.01
        tokens = [(m.end(), m.group().decode("utf-8", "replace").strip(_PUNCTUATION))
                  for m in re.finditer(rb"\S+", data)]
        # events in order of audio, each with the index of its token; several events on one token are one word
        timed = []
        for position, _, sample in sorted(self._events, key=lambda e: e[2]):
            index = next((i for i, (end, _) in enumerate(tokens) if end > position - 1), None)
            if index is None or (timed and index <= timed[-1][0]):
                continue
            timed.append((index, sample))
        words = []
        for n, (index, sample) in enumerate(timed):
            first = 0 if n == 0 else index  # tokens before the first event belong to the first word
            last = timed[n + 1][0] if n + 1 < len(timed) else len(tokens)
            end_sample = timed[n + 1][1] if n + 1 < len(timed) else len(audio)
            text = " ".join(t for _, t in tokens[first:last] if t)
            voiced = np.flatnonzero(loud[sample:end_sample])
            if not text or voiced.size == 0:
                continue
            words.append(Word(text, (sample + voiced[0]) / rate, (sample + voiced[-1] + 1) / rate))
        return words
