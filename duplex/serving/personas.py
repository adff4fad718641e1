"""System prompts on the server (docs/serving.md, "Personas"): the voice folder clients pick from by name, and the
prompts built from it, cached by content.

A client names a voice as NVIDIA's web client does (``voice_prompt=NATF2.pt``: a file in the server's voice folder,
``--voice-prompt-dir``, by default the model's own voices) and gives a role text (``text_prompt=...``, wrapped in
``<system>`` tags by the engine, as NVIDIA does). A name is a plain file name, looked up in the folders only (never
a path: ``../x``, ``/etc/x`` and hidden files are refused); a bare ``NATF2`` also finds ``NATF2.pt``. The request is
refused before the WebSocket handshake, with an HTTP status and a line saying why (``Refusal``).

Building a prompt (``Engine.system_prompt``: reading a voice-embedding ``.pt``, or reading, normalising and encoding
a recording, and tokenizing the role) runs on a thread of its own, never under the engine's lock, so the frame clock
does not wait for it; the frames are kept by file (path, size, modification time) and text, so the next client
asking for the same voice and role gets them at once. The engine then keeps the state a prompt ends in (its
``prompt_states``), so that client's slot also starts in the persona at once instead of stepping the prompt again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import PromptError
from ..runtime.voices import voice_folder

log = logging.getLogger(__name__)

# What a voice file may be: NVIDIA's voice-embedding .pt, or a recording (normalised and encoded when asked for).
VOICE_EXTENSIONS = (".pt", ".wav", ".flac", ".ogg", ".mp3")
MAX_VOICE_NAME = 255  # a file name's length on common file systems
PROMPT_CACHE_SIZE = 32  # prompts kept by (voice file, text); each is a few KB of tokens (plus embeddings for a .pt)


@dataclass(eq=False)
class Refusal(Exception):
    """A prompt request refused before the handshake: the HTTP status and why (one line for the client)."""

    status: int
    reason: str

    def __str__(self) -> str:
        return self.reason


class VoiceCatalog:
    """The voices a server's clients may name: the files with a voice extension in ``folders`` (searched in order;
    an entry that is a ``voices.tgz`` is extracted once, as ``runtime.voices.voice_folder`` does). Listed afresh at
    each request (a folder of a few dozen files: microseconds), so a voice added while the server runs is found."""

    def __init__(self, folders: Sequence[str] = ()):
        self.folders: List[str] = []
        self.problem: Optional[str] = None  # why a folder of the model's could not be used (said when asked)
        for folder in map(os.fspath, folders):
            if os.path.isfile(folder):  # an archive not extracted when the model was found
                try:
                    folder = voice_folder(folder)
                except PromptError as e:
                    self.problem = str(e)
                    log.warning("voice prompts: %s", e)
                    continue
            self.folders.append(folder)

    def names(self) -> List[str]:
        """The voice names, sorted (a name in two folders once: the first folder's file is used)."""
        found = set()
        for folder in self.folders:
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            found.update(n for n in entries if _is_voice_name(n) and os.path.isfile(os.path.join(folder, n)))
        return sorted(found)

    def find(self, name: str) -> str:
        """The file of the voice ``name`` (a plain file name in the folders; ``NAME`` also finds ``NAME.pt``), or a
        ``Refusal``: 400 for a name that is not a plain file name, 404 for one not there (with the names there)."""
        if not _is_plain_name(name):
            raise Refusal(400, f"voice_prompt {name[:80]!r}: not a voice name (a file name in the server's voice "
                               "folder, such as NATF2.pt; paths are not accepted)")
        for folder in self.folders:
            for candidate in (name, name + ".pt"):
                path = os.path.join(folder, candidate)
                if _is_voice_name(candidate) and os.path.isfile(path):
                    return path
        if not self.folders:
            why = f" ({self.problem})" if self.problem else ""
            raise Refusal(404, f"voice_prompt {name!r}: this server has no voice prompts{why}; start it with "
                               "--voice-prompt-dir DIR, or leave voice_prompt out")
        names = self.names()
        shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "") if names else "none"
        raise Refusal(404, f"voice_prompt {name!r} not found; this server's voices: {shown}")


def _is_plain_name(name: str) -> bool:
    """A file name alone: no folder part (either slash), not hidden, no control characters, not too long."""
    return (0 < len(name) <= MAX_VOICE_NAME and "/" not in name and "\\" not in name and not name.startswith(".")
            and ":" not in name and all(ord(c) >= 32 and c != "\x7f" for c in name))


def _is_voice_name(name: str) -> bool:
    return _is_plain_name(name) and name.lower().endswith(VOICE_EXTENSIONS)


class PromptCache:
    """System prompts built by ``build(voice_path, text)`` (the engine's ``system_prompt``) on a thread of its own,
    kept by (voice file, its size and modification time, text), least recently used dropped first. Requests for
    a prompt being built wait for that build rather than starting another."""

    def __init__(self, build: Callable[[Optional[str], Optional[str]], object], size: int = PROMPT_CACHE_SIZE):
        self._build, self.size = build, size
        self._kept: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
        self._building: Dict[tuple, asyncio.Future] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompts")
        self.built = self.hits = 0

    @staticmethod
    def key(voice: Optional[str], text: Optional[str]) -> tuple:
        if voice is None:
            return (None, text)
        try:
            info = os.stat(voice)
            return (os.path.realpath(voice), info.st_size, info.st_mtime_ns, text)
        except OSError:
            return (voice, None, None, text)

    async def get(self, voice: Optional[str], text: Optional[str]):
        """The prompt for ``voice`` (a file, or None) and ``text`` (or None): kept, or built now. Raises
        ``PromptError`` (or ``AudioError``) when the files cannot be used."""
        key = self.key(voice, text)
        if key in self._kept:
            self._kept.move_to_end(key)
            self.hits += 1
            return self._kept[key]
        building = self._building.get(key)
        if building is None:
            loop = asyncio.get_running_loop()
            building = asyncio.ensure_future(loop.run_in_executor(self._executor, self._build, voice, text))
            # a build whose every requester left is still collected (no "exception was never retrieved")
            building.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._building[key] = building
            try:
                prompt = await asyncio.shield(building)
            finally:
                self._building.pop(key, None)
            self.built += 1
            self._kept[key] = prompt
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
            return prompt
        return await asyncio.shield(building)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def describe(voice: Optional[str], text: Optional[str]) -> str:
    """For the log: which voice and role a session asked for."""
    parts = []
    if voice:
        parts.append(f"voice {os.path.basename(voice)}")
    if text:
        parts.append(f"role {text[:60]!r}" + ("..." if len(text) > 60 else ""))
    return ", ".join(parts)


