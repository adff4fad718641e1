"""The text stream ("inner monologue") of a training segment, built from word timestamps as Kyutai's fine-tuning
code builds it (docs/training.md, "The text stream"; ../shared/spec/training.md §2).

One token per 80 ms frame: a word's tokens go one per frame from the frame its start falls in,
``floor(start * frame_rate)``; every other frame is PAD (3). The frame just before a word's first token becomes
EPAD (0, "end of padding") when it is PAD. When the next word starts, the tokens of the previous word not placed
yet are dropped, so of two words starting in the same frame only the second is kept.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, List, Sequence, Tuple

from ..model.tokenizer import END_OF_PAD_ID, PAD_ID

Word = Tuple[str, float, float]  # (text, start s, end s)


def text_stream(words: Iterable[Word], num_frames: int, tokenize: Callable[[str], Sequence[int]],
                frame_rate: float, pad_id: int = PAD_ID, end_of_pad_id: int = END_OF_PAD_ID,
                first_frame: int = 0) -> List[int]:
    """The ``num_frames`` text tokens of the segment that starts at frame ``first_frame`` of a file whose words are
    ``words`` (times in the file; words starting outside the segment and words with start >= end are left out).

    A word's frame is taken in the whole file, then the segment's first frame subtracted: shifting the times in
    seconds first and flooring after would put a word that starts on a frame boundary one frame early whenever
    the subtraction rounds down (about 2% of words in random crops)."""
    def frame(start: float) -> int:
        return math.floor(start * frame_rate) - first_frame

    kept = sorted(((w, s, e) for w, s, e in words if s < e and 0 <= s and 0 <= frame(s) < num_frames),
                  key=lambda word: word[1])
    stream = [pad_id] * num_frames
    for i, (word, start, _) in enumerate(kept):
        first = frame(start)
        # The next word's start frame cuts this word's tokens short (Kyutai's default, not its "shift" variant).
        limit = frame(kept[i + 1][1]) if i + 1 < len(kept) else num_frames
        tokens = list(tokenize(word))[:max(0, limit - first)]
        if not tokens:
            continue
        for offset, token in enumerate(tokens):
            stream[first + offset] = int(token)
        if first > 0 and stream[first - 1] == pad_id:
            stream[first - 1] = end_of_pad_id
    return stream
