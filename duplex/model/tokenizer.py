"""The text tokenizer: a SentencePiece model given by path (Kyutai's ``tokenizer_spm_32k_3.model`` for Moshi).

Display rules (docs/kyutai-compat.md §2.11): ids 0 (end of padding) and 3 (padding) are never shown, ids outside the
vocabulary (such as the initial token 32000) neither, and "▁" (U+2581) marks a word start, shown as a space.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Union

import sentencepiece

from codec.io.files import readable_file

from ..errors import TokenizerError

PAD_ID = 3
END_OF_PAD_ID = 0
_WORD_START = "\u2581"



class TextTokenizer:
    def __init__(self, path: Union[str, os.PathLike], hidden_ids: Iterable[int] = (END_OF_PAD_ID, PAD_ID)):
        path = readable_file(path, "tokenizer model", TokenizerError)  # not found, a folder, a FIFO: one message
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{path} is not a SentencePiece model ({e})") from None
        self.path = path
        self.hidden_ids = frozenset(int(i) for i in hidden_ids)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str) -> List[int]:
        return list(self.sp.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids if self.is_shown(int(i))])

    def is_shown(self, token: int) -> bool:
        return 0 <= token < self.vocab_size and token not in self.hidden_ids

    def piece(self, token: int) -> Optional[str]:
        """The text to display for one generated token ("▁" as a space), or None when it is not shown."""
        token = int(token)
        if not self.is_shown(token):
            return None
        return self.sp.IdToPiece(token).replace(_WORD_START, " ")
