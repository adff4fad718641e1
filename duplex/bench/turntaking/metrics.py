"""Full-Duplex-Bench v1's scoring rules (and v1.5's VAD timing), re-implemented from its published scorer
(github DanielLin94144/Full-Duplex-Bench, ``v1_v1.5/evaluation/``); where FDB's code crashes or depends on an
accident, the choice made here is said.

* **Take-over** (pause handling, smooth turn-taking, user interruption): no words -> 0; words spanning less than
  1 s (last end - first start) and at most 3 of them -> 0; otherwise 1. "Words" are the ASR chunks, as FDB counts
  them. A missing last end time counts as the last start (FDB's pause scorer does this; its other scorers crash).
* **Latency**: first word start - the reference time (turn-taking: the start of the annotated event, i.e. the end
  of the user's turn; interruption: the end of the interruption), clipped at 0, only for samples that took over;
  FDB reports the mean (the median is given too).
* **Backchannel**: on the model's speech segments (Silero VAD of output.wav at 16 kHz, times rounded to 0.1 s): a
  segment over 3 s -> TOR 1 and the rest is ignored; for each shorter segment, its overlapping words decide: more
  than 3 -> 1; under 1 s and at most 2 -> 0; else 1, the last segment's verdict standing. Frequency: counted short
  segments per second of input; JSD: the Jensen-Shannon distance (natural log, scipy's definition) between the
  0.2 s histogram of counted segments and the human distribution of ``icc_gt_distribution.json``, 1 when nothing
  was counted. Which short segments count changed in FDB on 2026-02-22: ``rule="current"`` counts every short
  segment before a long one; ``rule="published"`` (the code of FDB's published Moshi figures) counts only those
  that did not take over, a take-over emptying the list.
* **v1.5 timing** (VAD of input and output at 16 kHz, user segments merged across gaps up to 0.6 s, the model's up
  to 0.5 s): stop intervals are the overlaps of user and model speech, response intervals run from a user
  segment's end to the next model start.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .fdb import Chunk, FDBError

Segment = Tuple[float, float]

TURN_SECONDS, TURN_WORDS = 1.0, 3  # FDB's turn_duration_threshold and turn_num_words_threshold
BACKCHANNEL_LONG, BACKCHANNEL_WINDOW, BACKCHANNEL_EPS = 3.0, 0.2, 1e-10
USER_GAP, MODEL_GAP = 0.6, 0.5  # v1.5: segments closer than this are one
EARLY_SECONDS, EARLY_WORDS_ALLOWED = 0.3, 1  # talks_early: more words than this this long before the turn's end
RULES = ("current", "published")  # which short segments count as backchannels (the module's docstring)


def _end(chunk: Chunk) -> float:
    return chunk.start if chunk.end is None else chunk.end


def takeover(words: Sequence[Chunk]) -> int:
    """1 if these words take the turn (FDB's rule), else 0."""
    if not words:
        return 0
    if _end(words[-1]) - words[0].start < TURN_SECONDS and len(words) <= TURN_WORDS:
        return 0
    return 1


def latency(words: Sequence[Chunk], reference: float) -> Optional[float]:
    """Seconds from ``reference`` to the first word, clipped at 0; None if the words do not take over."""
    if not takeover(words):
        return None
    return max(0.0, words[0].start - reference)


def talks_early(words: Sequence[Chunk], end_of_turn: float) -> int:
    """1 if the model starts more than ``EARLY_WORDS_ALLOWED`` words over ``EARLY_SECONDS`` before the end of the
    user's turn, else 0: it speaks while the user is still asking (duplex's own figure, not FDB's: FDB's smooth
    turn-taking TOR counts such a reply as a turn taken). The rule of the shipped model's behaviour test
    (tests/runtime/test_default_model.py, which counts the words of the text stream's pieces as they come; here the
    words of output.json), which allows one early word (a breath, a backchannel such as "mhm")."""
    return int(sum(w.start < end_of_turn - EARLY_SECONDS for w in words) > EARLY_WORDS_ALLOWED)


def words_after(words: Sequence[Chunk], time: float) -> List[Chunk]:
    """The words that start at or after ``time`` (what FDB's ASR step keeps for user interruption, where it
    transcribes only the audio after the interruption's end)."""
    return [w for w in words if w.start >= time]


# ------------------------------------------------------------------------------------------------ backchannel
def _segment_words(words: Sequence[Chunk], start: float, end: float) -> List[Chunk]:
    """The words FDB counts for a segment: inside it, or straddling its start or its end. A word with no end
    time counts as a point at its start, and only if it starts at or after the segment's end (FDB skips the
    others)."""
    picked = []
    for w in words:
        if w.end is None and w.start < end:
            continue
        w_end = w.start if w.end is None else w.end
        if (start <= w.start and w_end <= end) or w.start <= end < w_end or w.start <= start < w_end:
            picked.append(w)
    return picked


def backchannel_sample(segments: Sequence[Segment], words: Sequence[Chunk], seconds: float,
                       truth: Optional[Sequence[float]] = None, rule: str = RULES[0]) -> dict:
    """TOR, frequency and (with ``truth``, the sample's human distribution) JSD of one backchannel sample."""
    if rule not in RULES:
        raise FDBError(f"the backchannel rule is one of {', '.join(RULES)}, not {rule!r}")
    tor, counted = 0, []
    for start, end in segments:
        if end - start > BACKCHANNEL_LONG:
            tor = 1
            break
        n = len(_segment_words(words, start, end))
        tor = 1 if n > TURN_WORDS else (0 if end - start < TURN_SECONDS and n <= 2 else 1)
        if rule == "current":
            counted.append((start, end))
        elif tor:
            counted = []
        else:
            counted.append((start, end))
    result = {"tor": tor, "freq": len(counted) / seconds if seconds > 0 else 0.0}
    if truth is not None:
        result["jsd"] = backchannel_jsd(counted, seconds, truth)
    return result


def backchannel_jsd(counted: Sequence[Segment], seconds: float, truth: Sequence[float]) -> float:
    """FDB's JSD: a histogram of 0.2 s bins (each segment adds 1 to the bins it touches), smoothed by 1e-10 and
    normalised, against the human distribution interpolated to the same number of bins; 1 with no segment."""
    if not counted:
        return 1.0
    histogram = segment_histogram(counted, seconds)
    bins = len(histogram)
    p = (histogram + BACKCHANNEL_EPS) / (histogram + BACKCHANNEL_EPS).sum()
    truth = np.asarray(truth, dtype=np.float64)
    q = np.interp(np.linspace(0, 1, bins), np.linspace(0, 1, len(truth)), truth)
    return js_distance(p, q)


def segment_histogram(segments: Sequence[Segment], seconds: float) -> np.ndarray:
    """Counts per 0.2 s bin over ``seconds`` (int(seconds / 0.2) + 1 bins): each segment adds 1 to every bin it
    touches, as FDB bins backchannels."""
    bins = int(seconds / BACKCHANNEL_WINDOW) + 1
    histogram = np.zeros(bins)
    for start, end in segments:
        first, last = int(start / BACKCHANNEL_WINDOW), int(end / BACKCHANNEL_WINDOW)
        histogram[first:min(last, bins - 1) + 1] += 1
    return histogram


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """The Jensen-Shannon distance (natural log) of two distributions, each renormalised first (as scipy's
    ``jensenshannon``): sqrt((KL(p||m) + KL(q||m)) / 2), m = (p + q) / 2; at most sqrt(ln 2)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log(a[nonzero] / m[nonzero])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


# -------------------------------------------------------------------------------------------------- v1.5
def merge(segments: Sequence[Segment], gap: float) -> List[Segment]:
    """Segments sorted and merged where the next starts within ``gap`` of the previous end."""
    merged: List[List[float]] = []
    for start, end in sorted(segments):
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def stop_intervals(user: Sequence[Segment], model: Sequence[Segment]) -> List[Segment]:
    """Where the model speaks over the user: each overlap [max of starts, min of ends], one per end time (to the
    millisecond, the shortest kept), sorted by end."""
    out, i, j = {}, 0, 0
    while i < len(user) and j < len(model):
        start, end = max(user[i][0], model[j][0]), min(user[i][1], model[j][1])
        if end > start:
            key = round(end * 1000)
            if key not in out or end - start < out[key][1] - out[key][0]:
                out[key] = (round(start, 3), round(end, 3))
        if user[i][1] < model[j][1]:
            i += 1
        else:
            j += 1
    return sorted(out.values(), key=lambda s: s[1])


def response_intervals(user: Sequence[Segment], model: Sequence[Segment]) -> List[Segment]:
    """From each user segment's end to the first model start after it; one per model start (the latest user end
    kept), sorted."""
    out = {}
    starts = sorted(s for s, _ in model)
    for _, user_end in user:
        following = [s for s in starts if s > user_end]
        if following:
            key = round(following[0] * 1000)
            if key not in out or user_end > out[key][0]:
                out[key] = (user_end, following[0])
    return sorted(out.values())


def summary(values: Sequence[Optional[float]]) -> dict:
    """Mean (FDB's figure) and median of the values that exist; None for both when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "median": None}
    return {"mean": float(np.mean(present)), "median": float(np.median(present))}
