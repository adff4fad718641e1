"""``duplex data synth``: a synthetic two-speaker conversation corpus made with espeak-ng, no downloads.

Each conversation is a 24 kHz stereo WAV (channel 0 the assistant, channel 1 the user) and a JSON file with the
turns, their transcripts and word-level timestamps per channel, the scenario of every exchange and the voices.
Scenarios (shares configurable):

* ``smooth``: the user asks and stops; the assistant answers after a gap like people's (around 200 ms, normally
  distributed with a 60 ms spread, kept within 80-450 ms).
* ``pause``: the user hesitates inside the turn (a filler, then 0.5-2 s of silence) and the assistant waits for
  the end of the turn before answering.
* ``interrupt``: the user barges in while the assistant speaks; the assistant stops within ~100-200 ms and
  answers the new question.
* ``backchannel``: in a long user turn the assistant says "mhm", "yeah"... in the user's pause, then answers.
* ``silence``: nobody speaks for 1.5-4 s.

For a persona (a LoRA adapter's data: ``demos/lora-persona``), ``SynthOptions`` can fix the assistant's voice
(``assistant_voice``, ``assistant_rate``, ``assistant_pitch``: one espeak-ng voice for every assistant utterance)
and give it a signature ``greeting``: a share (``greeting_share``) of the conversations open with the assistant
saying it into a quiet line, where conversations otherwise open (0.3-1.0 s in), the user starting after it as after
any assistant turn; the others open with the user speaking at once (within 0.2 s, as the turn-taking samples of
``duplex bench turns make-set`` do) and no greeting, so that the assistant learns to greet only a quiet line.
With none of these set, a corpus is what it always was for its seed, byte for byte.

``mix`` chooses the scenarios and their content. ``"v1"`` (the default) is the corpus the shipped default model was
trained on, unchanged. ``"v2"`` (``ConversationV2``; docs/training.md, "Turn-taking data: the v2 mix") is made
from that model's failures: conversations that open with a greeting answered with a greeting, answers restated as
sentences of at least five words, pauses whose cue is in the words (a clause left open, "i want to
know, um, ...") and in the prosody (the last word slow, a continuation rise), barge-ins anywhere in a long answer
(the assistant stops within 0.08-0.25 s), the user's own backchannels ("mhm", "right") over or after an answer
that the assistant does not stop or answer for (``user_backchannel``), a larger grammar (``grammar.exchange_v2``),
and a user channel with more voices, rates, pitches, pitch ranges and levels, background noise and room reverb.

Content comes from ``duplex.data.synth.grammar`` (answers depend on the question; follow-up questions depend on the
previous answer). Every conversation is a deterministic function of (seed, index); every twentieth conversation
(by default) is held out, with a user voice the training split never hears.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from codec import MimiConfig
from codec.io.audio import resample

from ...errors import DatasetError, EspeakError, UsageError
from .espeak import Synthesizer
from .grammar import (
    BACKCHANNELS,
    BACKCHANNELS_V2,
    FILLERS,
    FILLERS_V2,
    LEAD_INS_V2,
    TAILS_V2,
    Exchange,
    exchange,
    exchange_v2,
    greeting_v2,
)

SAMPLE_RATE = MimiConfig().sample_rate  # the codec's rate: what it encodes and the LM is trained on
SCENARIOS = ("smooth", "pause", "interrupt", "backchannel", "silence")
DEFAULT_SHARES = {"smooth": 0.35, "pause": 0.15, "interrupt": 0.15, "backchannel": 0.15, "silence": 0.2}
SCENARIOS_V2 = SCENARIOS + ("user_backchannel",)
MIXES = {"v1": DEFAULT_SHARES,
         "v2": {"smooth": 0.25, "pause": 0.25, "interrupt": 0.2, "backchannel": 0.1, "user_backchannel": 0.1,
                "silence": 0.1}}
TRAIN_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029"]
HELDOUT_USER_VOICES = ["en-gb-x-gbcwmd"]
# mix v2: how far under the speech the user channel's background noise lies, dB (SynthOptions.user_noise_snr)
USER_NOISE_SNR = (10.0, 40.0)
VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4", "+klatt"]
# Mix v2's user channel: more voices (espeak-ng's named variants besides the numbered ones), rates, pitches and
# pitch ranges. The held-out user voice stays one the training split never hears (HELDOUT_USER_VOICES).
USER_VOICES_V2 = TRAIN_VOICES + ["en-us-nyc"]
VARIANTS_V2 = VARIANTS + ["+" + name for name in (
    "Adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "Antonio", "Auntie", "Belinda", "Benjamin", "Caleb", "David",
    "Ed", "Edward", "Gene", "Gustave", "Henrique", "Hugo", "Jacky", "John", "Lee", "Linda", "Marco", "Max",
    "Michael", "Mike", "Paul", "Pedro", "Quincy", "Rob", "Robert", "Steph", "Zac", "travis", "victor", "norbert",
    "sandro", "shelby", "grandma", "grandpa", "anika", "m5", "m6", "m8", "f5")]
CONTEXT = ["i have a quick question", "i was doing my homework", "my friend asked me something",
           "i am trying to remember something", "this is for a quiz", "okay so listen"]
CONTEXT_V2 = CONTEXT + ["so i was talking to my sister yesterday", "we are playing a game at school",
                        "i was reading a book this morning", "my teacher gave us a test today",
                        "i have been thinking about this for a while", "we had a long day at work",
                        "there is something i never understood", "i was cooking dinner a minute ago"]


@dataclass
class SynthOptions:
    shares: Optional[Dict[str, float]] = None  # the scenario mix; None: the mix's (MIXES)
    mix: str = "v1"  # "v1": the shipped default model's corpus; "v2": the second default model's (module docstring)
    opening_greeting: float = 0.35  # mix v2: the share of conversations the user opens with a greeting
    min_seconds: float = 20.0
    max_seconds: float = 40.0
    heldout_every: int = 20  # conversation i is held out when i % heldout_every == 0 (0: none)
    noise: bool = False
    level_variation: bool = True
    # mix v2: the share of conversations whose user channel is left clean (no room, background noise or microphone
    # gain). Every random draw is kept, so the corpus is the same conversations (words, voices, timings) at any share:
    # 1 is an ablation of the sound alone (docs/training.md, "The fourth candidate"), between 0 and 1 a corpus where
    # sound on the user channel is sometimes a turn and sometimes noise ("The fifth candidate").
    clean_user_share: float = 0.0
    # mix v2: how far under the speech the user channel's background noise lies (dB, drawn per conversation). The
    # same one draw at any range, so changing it changes the noise's level and nothing else.
    user_noise_snr: Tuple[float, float] = USER_NOISE_SNR
    # mix v2: False leaves out the room (the reverb tail after every user utterance in half the conversations) and
    # keeps the noise and the gain; the same draws (the room's tail is drawn and not applied), so the same
    # conversations with the same noise (docs/training.md, "Turn-taking data: the v2 mix").
    user_room: bool = True
    follow_up_probability: float = 0.3
    # A persona (see the module's docstring): None keeps the corpus's random voices and openings.
    assistant_voice: Optional[str] = None  # an espeak-ng voice, VOICE[+VARIANT], for every assistant utterance
    assistant_rate: int = 170  # words per minute, with assistant_voice (espeak-ng's default)
    assistant_pitch: int = 50  # 0-100, with assistant_voice (espeak-ng's default)
    greeting: Optional[str] = None  # what the assistant opens a conversation with
    greeting_share: float = 1.0  # of the conversations, those that open with the greeting (with greeting)

    def scenario_shares(self) -> Dict[str, float]:
        """The shares in use: ``shares``, or the mix's."""
        return dict(MIXES.get(self.mix, {}) if self.shares is None else self.shares)

    def validate(self) -> None:
        if self.mix not in MIXES:
            raise UsageError(f"unknown mix {self.mix!r}; mixes are {list(MIXES)}")
        scenarios = SCENARIOS_V2 if self.mix == "v2" else SCENARIOS
        shares = self.scenario_shares()
        unknown = sorted(set(shares) - set(scenarios))
        if unknown:
            raise UsageError(f"unknown scenario(s) {unknown} for mix {self.mix}; its scenarios are {list(scenarios)}")
        if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
            raise UsageError("scenario shares must be >= 0 and not all zero")
        if not 0 <= self.opening_greeting <= 1:
            raise UsageError(f"the opening greeting share must be 0-1, not {self.opening_greeting}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise UsageError("need 0 < min_seconds <= max_seconds")
        if self.assistant_voice is not None and not self.assistant_voice.strip():
            raise UsageError("the assistant's voice is empty (an espeak-ng voice, e.g. en-us-nyc+Annie)")
        if not 80 <= self.assistant_rate <= 450:
            raise UsageError(f"the assistant's rate must be 80-450 words per minute, not {self.assistant_rate}")
        if not 0 <= self.assistant_pitch <= 100:
            raise UsageError(f"the assistant's pitch must be 0-100, not {self.assistant_pitch}")
        if self.greeting is not None and not _words_of(self.greeting):
            raise UsageError("the greeting has no words")
        if not 0 <= self.greeting_share <= 1:
            raise UsageError(f"the greeting share must be 0-1, not {self.greeting_share}")
        if self.greeting_share < 1 and self.greeting is None:
            raise UsageError("a greeting share needs a greeting")
        if not 0 <= self.clean_user_share <= 1:
            raise UsageError(f"the clean user channel's share must be 0-1, not {self.clean_user_share}")
        low, high = self.user_noise_snr
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
            raise UsageError(f"the user channel's noise SNR range must be 0 <= LOW <= HIGH dB, not {low} {high}")
        if tuple(self.user_noise_snr) != USER_NOISE_SNR and self.mix != "v2":
            raise UsageError("the user channel's noise level is an option of --mix v2 (v1 has no noise on it)")
        if not self.user_room and self.mix != "v2":
            raise UsageError("leaving out the user channel's room is an option of --mix v2 (v1 has no room on it)")
        if self.clean_user_share > 0 and self.mix != "v2":
            raise UsageError("a clean user channel is an option of --mix v2 (v1 has no room, noise or gain on it)")


@dataclass
class Voice:
    name: str
    rate: int
    pitch: int


@dataclass
class VoiceV2(Voice):
    range: int = 50  # espeak-ng's pitch range (0-100): flat to lively intonation


class Conversation:
    """A two-channel timeline of utterances, built exchange by exchange."""

    def __init__(self, rng: random.Random, synth, assistant: Voice, user: Voice, options: SynthOptions):
        self.rng, self.synth, self.options = rng, synth, options
        self.voices = {"assistant": assistant, "user": user}
        self.turns: List[dict] = []
        self.audio: Dict[str, List[Tuple[int, np.ndarray]]] = {"assistant": [], "user": []}
        self.scenarios: List[dict] = []
        self.t = rng.uniform(0.3, 1.0)

    def say(self, channel: str, text: str, start: float, cut: Optional[float] = None, rate_scale: float = 1.0,
            pitch_shift: int = 0, about: Optional[Exchange] = None) -> Tuple[float, float]:
        """Place ``text`` on ``channel`` from ``start`` (s); ``cut``: stop the audio at that time (interruption);
        ``rate_scale``, ``pitch_shift``: this utterance slower or faster, higher or lower than the voice (prosody);
        ``about``: the exchange this turn answers, whose topic and key (what a right answer says) its metadata
        keeps for the scenario sets (``bench turns make-set``). Returns (speech onset, speech end) in seconds."""
        v = self.voices[channel]
        speech = self.synth.speak(text, voice=v.name, rate=max(80, int(round(v.rate * rate_scale))),
                                  pitch=min(100, max(0, v.pitch + pitch_shift)), pitch_range=getattr(v, "range", None))
        if len(speech.audio) == 0:
            return start, start
        audio = resample(torch.from_numpy(speech.audio), speech.sample_rate, SAMPLE_RATE).numpy()
        words = [{"word": w.text, "start": float(start + w.start), "end": float(start + w.end)} for w in speech.words]
        if cut is not None:
            keep = max(0, int(round((cut - start) * SAMPLE_RATE)))
            if keep < len(audio):
                fade = min(keep, int(0.02 * SAMPLE_RATE))
                audio = audio[:keep].copy()
                if fade:
                    audio[keep - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            words = [dict(w, end=min(w["end"], cut)) for w in words if w["start"] < cut - 0.05]
        if self.options.level_variation:
            # Up to +3 dB, but never past a peak of 0.9: espeak's own peaks reach 0.92, and the render's final
            # clip to [-1, 1] must not cut speech (the headroom leaves room for the optional noise).
            gain = 10 ** (self._gain_db(channel) / 20)
            peak = float(np.abs(audio).max()) if len(audio) else 0.0
            audio = audio * np.float32(min(gain, 0.9 / peak) if peak > 0 else gain)
        self.audio[channel].append((int(round(start * SAMPLE_RATE)), audio.astype(np.float32)))
        if not words:
            return start, start
        self.turns.append({"channel": channel, "start": words[0]["start"], "end": words[-1]["end"],
                           "text": " ".join(w["word"] for w in words), "words": words,
                           **({"interrupted": True} if cut is not None and cut < start + len(speech.audio)
                              / speech.sample_rate else {}),
                           **({"topic": about.topic, "key": list(about.key) if about.key else None} if about else {})})
        return words[0]["start"], words[-1]["end"]

    def _gain_db(self, channel: str) -> float:
        return self.rng.uniform(-6.0, 3.0)

    def gap(self) -> float:
        """A reply gap like people's in conversation: around 200 ms, rarely under 100 ms or over 400 ms."""
        return min(max(self.rng.gauss(REPLY_GAP_MEAN, REPLY_GAP_SD), REPLY_GAP_RANGE[0]), REPLY_GAP_RANGE[1])

    # ------------------------------------------------------------------------------------------ scenarios
    def smooth(self, ex: Exchange) -> None:
        _, q_end = self.say("user", _sentence(ex.question, "?"), self.t)
        _, a_end = self.say("assistant", _sentence(ex.answer, "."), q_end + self.gap(), about=ex)
        self.t = a_end + self.rng.uniform(0.4, 1.2)

    def pause(self, ex: Exchange) -> None:
        words = ex.question.split()
        split = len(words) // 2  # a one-word question: the hesitation comes first
        end = self.t
        if split:
            _, end = self.say("user", " ".join(words[:split]), self.t)
        _, end = self.say("user", self.rng.choice(FILLERS), end + self.rng.uniform(0.1, 0.3))
        _, q_end = self.say("user", _sentence(" ".join(words[split:]), "?"), end + self.rng.uniform(0.5, 2.0))
        _, a_end = self.say("assistant", _sentence(ex.answer, "."), q_end + self.gap(), about=ex)
        self.t = a_end + self.rng.uniform(0.4, 1.2)

    def interrupt(self, ex: Exchange) -> None:
        _, q_end = self.say("user", _sentence(ex.question, "?"), self.t)
        a_start = q_end + self.gap()
        # The planned answer: long enough to be interrupted in the middle.
        speech = self.synth.speak(ex.answer, voice=self.voices["assistant"].name, rate=self.voices["assistant"].rate,
                                  pitch=self.voices["assistant"].pitch)
        planned = len(speech.audio) / speech.sample_rate
        barge_in = a_start + planned * self.rng.uniform(0.3, 0.6)
        cut = barge_in + self.rng.uniform(0.1, 0.2)  # the assistant stops within ~200 ms
        self.say("assistant", _sentence(ex.answer, "."), a_start, cut=cut, about=ex)
        new = exchange(self.rng)
        _, q2_end = self.say("user", _sentence(new.question, "?"), barge_in)
        _, a_end = self.say("assistant", _sentence(new.answer, "."), max(q2_end, cut) + self.gap(), about=new)
        self.t = a_end + self.rng.uniform(0.4, 1.2)

    def backchannel(self, ex: Exchange) -> None:
        _, c_end = self.say("user", _sentence(self.rng.choice(CONTEXT), "."), self.t)
        pause = self.rng.uniform(0.6, 1.2)
        _, bc_end = self.say("assistant", self.rng.choice(BACKCHANNELS), c_end + self.rng.uniform(0.15, 0.3))
        # The user goes on after the backchannel, never over it: it belongs in the user's pause.
        _, q_end = self.say("user", _sentence(ex.question, "?"), max(c_end + pause, bc_end + 0.15))
        _, a_end = self.say("assistant", _sentence(ex.answer, "."), q_end + self.gap(), about=ex)
        self.t = a_end + self.rng.uniform(0.4, 1.2)

    def silence(self, ex: Exchange) -> None:
        self.t += self.rng.uniform(1.5, 4.0)

    def greet(self, greeting: str) -> None:
        """The assistant opens the conversation with ``greeting`` at the opening time; the user's first turn
        comes after it as after any assistant turn."""
        start = self.t
        _, end = self.say("assistant", _sentence(greeting, "."), self.t)
        self.t = end + self.rng.uniform(0.4, 1.2)
        self.scenarios.append({"type": "greeting", "topic": "greeting", "start": float(start), "end": float(self.t)})

    def add(self, kind: str, ex: Exchange) -> None:
        start = self.t
        getattr(self, kind)(ex)
        self.scenarios.append({"type": kind, "topic": ex.topic, "start": float(start), "end": float(self.t)})

    # ---------------------------------------------------------------------------------------------- output
    def render(self, noise: bool) -> np.ndarray:
        length = int(math.ceil(self.t * SAMPLE_RATE))
        for channel in self.audio.values():
            for offset, audio in channel:
                length = max(length, offset + len(audio))
        stereo = np.zeros((2, length), np.float32)
        for row, channel in enumerate(("assistant", "user")):
            for offset, audio in self.audio[channel]:
                stereo[row, offset:offset + len(audio)] += audio
            if noise:
                level = np.sqrt(np.mean(stereo[row] ** 2) + 1e-12)
                snr_db = self.rng.uniform(20.0, 40.0)
                noise_rng = np.random.default_rng(self.rng.getrandbits(32))
                stereo[row] += (level / 10 ** (snr_db / 20) * noise_rng.standard_normal(length)).astype(np.float32)
        return np.clip(stereo, -1.0, 1.0)

class ConversationV2(Conversation):
    """Mix v2's scenarios (the module's docstring; the why: docs/training.md, "Turn-taking data: the v2 mix")."""

    def _gain_db(self, channel: str) -> float:
        # the user at any level a microphone gives (-12..+3 dB); the assistant, one voice, about steady
        return self.rng.uniform(-12.0, 3.0) if channel == "user" else self.rng.uniform(-3.0, 1.0)

    def long_answer(self, ex: Exchange) -> str:
        """The answer and a second sentence: room for a barge-in or a backchannel inside it."""
        return _sentence(ex.answer, ".") + " " + self.rng.choice(TAILS_V2)

    def pause(self, ex: Exchange) -> None:
        """A clause left open, its last word slow and rising ("i want to know," / "what is seven,"), maybe a
        filler, 0.6-3 s of silence, then the rest of the question; the assistant answers only after it."""
        rng = self.rng
        words = ex.question.split()
        if len(words) < 3 or rng.random() < 0.5:
            head, rest = rng.choice(LEAD_INS_V2).split(), ex.question
        else:
            split = rng.randint(1, len(words) - 1)
            head, rest = words[:split], " ".join(words[split:])
        head = [w.rstrip(",") for w in head]
        last_start = self.t
        if len(head) > 1:
            _, end = self.say("user", " ".join(head[:-1]), self.t)
            last_start = end + rng.uniform(0.0, 0.05)
        _, end = self.say("user", head[-1] + ",", last_start, rate_scale=rng.uniform(0.55, 0.8),
                          pitch_shift=rng.randint(0, 12))
        if rng.random() < 0.6:
            _, end = self.say("user", rng.choice(FILLERS_V2) + ",", end + rng.uniform(0.1, 0.4),
                              rate_scale=rng.uniform(0.5, 0.75))
        _, q_end = self.say("user", _sentence(rest, "?"), end + rng.uniform(0.6, 3.0))
        _, a_end = self.say("assistant", _sentence(ex.answer, "."), q_end + self.gap(), about=ex)
        self.t = a_end + rng.uniform(0.4, 1.2)

    def interrupt(self, ex: Exchange) -> None:
        """The user barges in anywhere in a two-sentence answer (from 0.3 s after its first word to 0.4 s before
        its end), often with "wait," or "sorry,"; the assistant stops 0.08-0.25 s later and answers the new turn."""
        rng = self.rng
        _, q_end = self.say("user", _sentence(ex.question, "?"), self.t)
        a_start = q_end + self.gap()
        answer = self.long_answer(ex)
        v = self.voices["assistant"]
        speech = self.synth.speak(answer, voice=v.name, rate=v.rate, pitch=v.pitch, pitch_range=getattr(v, "range",
                                                                                                          None))
        planned = len(speech.audio) / speech.sample_rate
        onset = speech.words[0].start if speech.words else 0.0
        low = onset + 0.3
        barge_in = a_start + rng.uniform(low, max(low, planned - 0.4))
        cut = barge_in + rng.uniform(0.08, 0.25)
        self.say("assistant", answer, a_start, cut=cut, about=ex)
        new = exchange_v2(rng)
        prefix = rng.choice(["", "", "", "wait, ", "sorry, ", "no, wait, ", "actually, ", "hold on, ", "stop, "])
        _, q2_end = self.say("user", _sentence(prefix + new.question, "?"), barge_in)
        _, a_end = self.say("assistant", _sentence(new.answer, "."), max(q2_end, cut) + self.gap(), about=new)
        self.t = a_end + rng.uniform(0.4, 1.2)

    def backchannel(self, ex: Exchange) -> None:
        _, c_end = self.say("user", _sentence(self.rng.choice(CONTEXT_V2), "."), self.t)
        pause = self.rng.uniform(0.6, 1.2)
        _, bc_end = self.say("assistant", self.rng.choice(BACKCHANNELS_V2), c_end + self.rng.uniform(0.15, 0.3))
        _, q_end = self.say("user", _sentence(ex.question, "?"), max(c_end + pause, bc_end + 0.15))
        _, a_end = self.say("assistant", _sentence(ex.answer, "."), q_end + self.gap(), about=ex)
        self.t = a_end + self.rng.uniform(0.4, 1.2)

    def user_backchannel(self, ex: Exchange) -> None:
        """The user says "mhm", "right"... over a two-sentence answer (which goes on, uncut) or just after it
        (and the assistant does not reply): a backchannel is not a turn."""
        rng = self.rng
        _, q_end = self.say("user", _sentence(ex.question, "?"), self.t)
        a_start, a_end = self.say("assistant", self.long_answer(ex), q_end + self.gap(), about=ex)
        if a_end - a_start > 1.6 and rng.random() < 0.6:
            at = rng.uniform(a_start + 0.6, a_end - 0.6)
        else:
            at = a_end + rng.uniform(0.15, 0.5)
        _, bc_end = self.say("user", rng.choice(BACKCHANNELS_V2), at)
        self.t = max(a_end, bc_end) + rng.uniform(0.6, 1.4)

    def render(self, noise: bool) -> np.ndarray:
        """The channels as mix v1 renders them (``noise``: its noise on both), then the user channel through a room
        (half the conversations: an exponentially decaying noise tail, RT60 0.15-0.6 s) and over background noise
        (three in four: white to brown, 10-40 dB under the speech, ``options.user_noise_snr``), at a gain of
        -10..+2 dB for the whole conversation, its peak kept under 0.9; none of the three in the share
        ``options.clean_user_share`` of the conversations, no room with ``options.user_room`` False."""
        # scipy only when a v2 conversation is rendered: `duplex --help` (which imports this module) stays light
        from scipy.signal import fftconvolve, lfilter  # noqa: PLC0415

        stereo = super().render(noise)
        user = stereo[1].astype(np.float64)
        rng = self.rng
        noise_rng = np.random.default_rng(rng.getrandbits(32))
        # Every draw is made first, in the order the corpora of earlier runs were made with, and whether to apply
        # them is drawn last (only at a share strictly between 0 and 1): a clean conversation is the same
        # conversation, and a corpus made at share 0 or 1 is bit for bit the one made before the share existed.
        room = (rng.uniform(0.15, 0.6), rng.uniform(0.1, 0.5)) if rng.random() < 0.5 else None
        hiss = (rng.uniform(*self.options.user_noise_snr), rng.uniform(0.0, 0.98)) if rng.random() < 0.75 else None
        gain_db = rng.uniform(-10.0, 2.0)  # the microphone's gain: the whole conversation louder or quieter
        share = self.options.clean_user_share
        clean = share >= 1 or (share > 0 and rng.random() < share)
        effects = {}
        if room is not None and not clean:
            rt60, wet = room
            t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
            # drawn even when the room is left out (`user_room` False), so the noise after it is the same noise
            tail = noise_rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
            if self.options.user_room:
                tail *= wet / max(float(np.sqrt(np.sum(tail ** 2))), 1e-9)
                tail[0] = 1.0
                user = fftconvolve(user, tail)[:len(user)]
                effects["room"] = {"rt60": round(rt60, 3), "wet": round(wet, 3)}
        if hiss is not None and not clean:
            snr_db, colour = hiss
            speech = np.abs(user) > 1e-3
            level = float(np.sqrt(np.mean(user[speech] ** 2))) if speech.any() else 0.05
            hum = lfilter([1.0], [1.0, -colour], noise_rng.standard_normal(len(user)))
            hum /= max(float(np.sqrt(np.mean(hum ** 2))), 1e-9)
            user = user + level / 10 ** (snr_db / 20) * hum
            effects["noise"] = {"snr_db": round(snr_db, 1), "colour": round(colour, 3)}
        if not clean:
            effects["gain_db"] = round(gain_db, 1)
            user *= 10 ** (gain_db / 20)
        peak = float(np.abs(user).max()) if len(user) else 0.0
        if peak > 0.9:
            user *= 0.9 / peak
        stereo[1] = user.astype(np.float32)
        self.effects = effects
        return stereo


def _words_of(text: str) -> List[str]:
    return [w for w in (t.strip(",.?!;:\"") for t in text.split()) if w]


def _sentence(text: str, mark: str) -> str:
    """``text`` ended by ``mark`` unless it already ends a sentence (no "help?." or "ahead..")."""
    return text if text.rstrip()[-1:] in (".", "?", "!") else text + mark


def _voice(rng: random.Random, bases: List[str]) -> Voice:
    return Voice(rng.choice(bases) + rng.choice(VARIANTS), rate=rng.randint(140, 200), pitch=rng.randint(25, 75))


def _user_voice_v2(rng: random.Random, bases: List[str]) -> VoiceV2:
    return VoiceV2(rng.choice(bases) + rng.choice(VARIANTS_V2), rate=rng.randint(120, 230), pitch=rng.randint(10, 90),
                   range=rng.randint(20, 100))


def make_conversation(index: int, seed: int, options: SynthOptions, synth) -> Tuple[np.ndarray, dict]:
    """Conversation ``index`` of the corpus ``seed``: (stereo float32 [2, T], metadata)."""
    rng = random.Random(f"duplex-corpus-{seed}-{index}")
    heldout = options.heldout_every > 0 and index % options.heldout_every == 0
    assistant = _voice(rng, TRAIN_VOICES)  # drawn even when fixed: the user's voice is the same as without
    if options.assistant_voice is not None:
        assistant = Voice(options.assistant_voice, options.assistant_rate, options.assistant_pitch)
    v2 = options.mix == "v2"
    if v2:
        # espeak-ng keeps a pitch range until it is set again: the assistant's is set too, to espeak's default
        assistant = VoiceV2(assistant.name, assistant.rate, assistant.pitch, range=50)
        user = _user_voice_v2(rng, HELDOUT_USER_VOICES if heldout else USER_VOICES_V2)
        while user.name == assistant.name:
            user = _user_voice_v2(rng, USER_VOICES_V2)
    else:
        user = _voice(rng, HELDOUT_USER_VOICES if heldout else TRAIN_VOICES)
        while user.name == assistant.name:
            user = _voice(rng, TRAIN_VOICES)
    conv = (ConversationV2 if v2 else Conversation)(rng, synth, assistant, user, options)
    target = rng.uniform(options.min_seconds, options.max_seconds)
    shares = options.scenario_shares()
    kinds = [k for k in (SCENARIOS_V2 if v2 else SCENARIOS) if shares.get(k, 0) > 0]
    weights = [shares[k] for k in kinds]
    new_exchange = exchange_v2 if v2 else exchange
    opening = None
    if options.greeting is not None:
        opening = "greeting" if rng.random() < options.greeting_share else "user"
        if opening == "greeting":
            conv.greet(options.greeting)
        else:
            conv.t = rng.uniform(0.0, 0.2)  # the user speaks at once: the line is never quiet at the start
    elif v2 and rng.random() < options.opening_greeting:
        conv.t = rng.uniform(0.1, 1.0)
        conv.add("smooth", greeting_v2(rng))  # the user opens with a greeting; the assistant greets back
    follow_up = None
    while conv.t < target:
        if opening == "user" and not conv.scenarios and any(k != "silence" for k in kinds):
            kind = rng.choices([k for k in kinds if k != "silence"], [w for k, w in zip(kinds, weights)
                                                                       if k != "silence"])[0]
        else:
            kind = rng.choices(kinds, weights)[0]
        if follow_up is not None and kind in ("smooth", "pause", "backchannel"):
            ex, follow_up = follow_up(rng), None
        else:
            ex = new_exchange(rng)
            follow_up = ex.follow_up if ex.follow_up and rng.random() < options.follow_up_probability else None
        conv.add(kind, ex)
    stereo = conv.render(options.noise)
    meta = {
        "id": f"c{index:06d}", "split": "heldout" if heldout else "train", "sample_rate": SAMPLE_RATE,
        "duration": round(stereo.shape[1] / SAMPLE_RATE, 3), "channels": ["assistant", "user"],
        "voices": {k: asdict(v) for k, v in conv.voices.items()}, **({"opening": opening} if opening else {}),
        **({"mix": "v2", "effects": conv.effects} if v2 else {}),
        "scenarios": conv.scenarios,
        "turns": sorted(conv.turns, key=lambda t: t["start"]),
        "text": {ch: " ".join(t["text"] for t in sorted(conv.turns, key=lambda t: t["start"]) if t["channel"] == ch)
                 for ch in ("assistant", "user")},
    }
    return stereo, meta


REPLY_GAP_MEAN, REPLY_GAP_SD, REPLY_GAP_RANGE = 0.2, 0.06, (0.08, 0.45)


def kyutai_alignments(meta: dict) -> list:
    """The assistant's words as Kyutai's fine-tuning code reads them: [[word, [start, end], "SPEAKER_MAIN"], ...],
    sorted by start (the user channel carries no text in Moshi's training)."""
    words = [w for t in meta["turns"] if t["channel"] == "assistant" for w in t["words"] if w["end"] > w["start"]]
    return [[w["word"], [round(w["start"], 3), round(w["end"], 3)], "SPEAKER_MAIN"]
            for w in sorted(words, key=lambda w: w["start"])]


# ------------------------------------------------------------------------------------------- the corpus
# espeak-ng's output depends on what the process synthesized before (its wave generator and voice data keep state
# between calls, even across espeak_Initialize), so a conversation is made reproducible by making it from the same
# state every time: each pool process initialises espeak and never speaks itself; every conversation is made in a
# child forked from that untouched state.
_WORKER: dict = {}


def _init_worker(seed: int, options: SynthOptions, out_dir: str) -> None:
    """A pool process: one thread each (the pool already has one process per core), espeak initialised, silent.

    It never raises: a pool whose initializer fails starts a new process in its place, forever (without
    libespeak-ng, at 100% CPU). The error goes with the first conversation instead, which ends the run.
    Ctrl-C is the parent's to handle: it ends the pool (SIGTERM, whose default action ends a worker at once), each
    worker's child dies with it (``_die_with_parent``), and the parent removes the partial corpus. A Python handler
    for SIGTERM would not do: a worker blocked on the pool's task-queue lock may never run it, when the kernel hands
    the signal to another of its threads, and the pool's terminate() then waits for it forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        synth = Synthesizer()
    except EspeakError as e:
        synth = e
    _WORKER.update(synth=synth, seed=seed, options=options, out_dir=out_dir)


def _die_with_parent(parent: int) -> None:
    """In a child forked to make one conversation: be killed when the pool process that forked it ends (Linux's
    PR_SET_PDEATHSIG), so that nothing writes into a corpus folder after an interrupted run has removed it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child finishes its one conversation
        return
    if os.getppid() != parent:  # the pool process ended before prctl took effect
        os._exit(1)


def _write_files(index: int) -> dict:
    stereo, meta = make_conversation(index, _WORKER["seed"], _WORKER["options"], _WORKER["synth"])
    folder = os.path.join(_WORKER["out_dir"], meta["split"])
    os.makedirs(folder, exist_ok=True)
    wav = os.path.join(folder, meta["id"] + ".wav")
    sf.write(wav, stereo.T, SAMPLE_RATE, subtype="PCM_16")
    # One file serves both readers: ours (turns, scenarios) and Kyutai's fine-tuning code ("alignments").
    with open(os.path.join(folder, meta["id"] + ".json"), "w", encoding="utf-8") as f:
        json.dump({**meta, "alignments": kyutai_alignments(meta)}, f, indent=1)
    return {"id": meta["id"], "split": meta["split"], "duration": meta["duration"],
            "wav": os.path.relpath(wav, _WORKER["out_dir"]),
            "json": os.path.relpath(wav[:-4] + ".json", _WORKER["out_dir"]),
            "scenarios": [s["type"] for s in meta["scenarios"]]}


def _write_one(index: int) -> dict:
    """Conversation ``index`` made in a child forked from the pool process's untouched espeak state (where fork
    exists; elsewhere in the pool process itself, reproducible only for the same order of work)."""
    if isinstance(_WORKER["synth"], Exception):  # espeak could not start in this process (_init_worker)
        raise _WORKER["synth"]
    if not hasattr(os, "fork"):
        return _write_files(index)
    read, write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: make, write, report, leave without running the parent's clean-up
        status = 1
        try:
            _die_with_parent(parent)
            os.close(read)
            os.write(write, json.dumps(_write_files(index)).encode("utf-8"))
            status = 0
        except BaseException as e:
            os.write(write, json.dumps({"error": f"{type(e).__name__}: {e}",
                                        "espeak": isinstance(e, EspeakError)}).encode("utf-8"))
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        reply = f.read()
    os.waitpid(pid, 0)
    row = json.loads(reply) if reply else {"error": "the synthesis process died"}
    if row.get("espeak"):  # e.g. a voice this espeak-ng lacks: the user's to fix, said in one line
        raise EspeakError(f"conversation {index}: {row['error']}")
    if "error" in row:
        raise RuntimeError(f"conversation {index}: {row['error']}")
    return row


# What a corpus folder holds; a folder holding any of them is not written into (two runs' files would mix).
def conversations_for_hours(hours: float, options: SynthOptions) -> int:
    """How many conversations make about ``hours`` of audio: their mean target length, plus the 2 s by which a
    conversation overshoots its target on average (its last turn ends after it)."""
    mean = (options.min_seconds + options.max_seconds) / 2 + 2.0
    return max(1, math.ceil(hours * 3600 / mean))


def format_corpus(rows: List[dict], seconds: float, out_dir: str) -> str:
    """One line: what ``synthesize_corpus`` wrote (its manifest ``rows``) in ``seconds``, and where."""
    hours = sum(r["duration"] for r in rows) / 3600
    heldout = sum(r["split"] == "heldout" for r in rows)
    return (f"{len(rows)} conversation{'' if len(rows) == 1 else 's'} ({heldout} held out), {hours:.2f} h of audio "
            f"in {seconds:.0f} s -> {out_dir}")


CORPUS_FILES = ("manifest.jsonl", "train.jsonl", "heldout.jsonl", "train", "heldout")


def synthesize_corpus(out_dir: str, conversations: int, seed: int = 0, options: Optional[SynthOptions] = None,
                      workers: int = 1, progress: bool = True) -> List[dict]:
    """Write ``conversations`` conversations and ``manifest.jsonl``; returns the manifest rows.

    A corpus is written whole or not at all: a folder that holds a corpus or part of one is refused, and when the
    run fails or is interrupted (Ctrl-C) what it wrote is removed before the error goes on."""
    options = options or SynthOptions()
    options.validate()
    found = [name for name in CORPUS_FILES if os.path.exists(os.path.join(out_dir, name))]
    if "manifest.jsonl" in found:
        raise DatasetError(f"{out_dir} already holds a corpus (manifest.jsonl); choose another folder")
    if found:
        raise DatasetError(f"{out_dir} already holds part of a corpus ({', '.join(found)}, no manifest.jsonl: a run "
                           "that was stopped?); remove it or choose another folder")
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        rows = _synthesize(out_dir, conversations, seed, options, workers, progress)
        _write_manifests(out_dir, rows)
    except BaseException:
        _remove_partial(out_dir, created)
        raise
    return rows


def _synthesize(out_dir: str, conversations: int, seed: int, options: SynthOptions, workers: int,
                progress: bool) -> List[dict]:
    rows = []
    bar = tqdm(total=conversations, unit="conv", desc="synthesizing") if progress else None
    try:
        # Always in pool processes (one for workers=1): the caller's process, its threads and its espeak are
        # untouched. Leaving the block (an error, Ctrl-C) terminates the pool.
        with multiprocessing.get_context("spawn").Pool(max(1, workers), _init_worker,
                                                       (seed, options, out_dir)) as pool:
            for row in pool.imap(_write_one, range(conversations), chunksize=2):
                rows.append(row)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def _write_manifests(out_dir: str, rows: List[dict]) -> None:
    with open(os.path.join(out_dir, "manifest.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    # Kyutai's fine-tuning layout: one JSONL manifest of {"path", "duration"} per split (paths relative to it).
    for split in ("train", "heldout"):
        with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                if row["split"] == split:
                    f.write(json.dumps({"path": row["wav"], "duration": row["duration"]}) + "\n")


def _remove_partial(out_dir: str, created: bool) -> None:
    """What an unfinished run wrote (the folder held none of it before: ``synthesize_corpus`` checked)."""
    for name in CORPUS_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
    if created:
        try:
            os.rmdir(out_dir)
        except OSError:  # something else was put there meanwhile: left alone
            pass
