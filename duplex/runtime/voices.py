"""Voice prompts as files (docs/offline.md): NVIDIA's voice folders, finding a voice by name, and making voice files.

NVIDIA ships PersonaPlex's voices as ``voices.tgz`` in the model's repository (a ``voices/`` folder of
voice-embedding ``.pt`` files, NATF0-3, NATM0-3, VARF0-4, VARM0-4, computed from PersonaPlex's weights); its server
and offline runner extract it beside the downloaded file. duplex reads it from the Hugging Face cache, never
downloading: ``voice_folder`` extracts it once to the ``voices/`` folder beside it (where NVIDIA's code extracts it
too, so either finds the other's), or, when the cache is read-only, to duplex's own cache folder. Extraction is
safe: only regular files and folders, no absolute names, no ``..``, no links, nothing outside the folder.

A voice file only suits the model it was made with (its embeddings are that model's inputs): ``make_voice_file``
writes NVIDIA's layout from any recording for the model at hand, as NVIDIA's ``save_voice_prompt_embeddings`` does,
and ``build_default_voices`` makes a folder answering NVIDIA's names for duplex's default model from espeak-ng
voices (``DEFAULT_VOICES``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import PromptError

PathLike = Union[str, os.PathLike]

NVIDIA_VOICE_NAMES = tuple([f"NATF{i}" for i in range(4)] + [f"NATM{i}" for i in range(4)]
                           + [f"VARF{i}" for i in range(5)] + [f"VARM{i}" for i in range(5)])
VOICES_ARCHIVE = "voices.tgz"  # in the PersonaPlex repositories
VOICES_FOLDER = "voices"  # what the archive holds, and where NVIDIA's code extracts it (beside the archive)
CACHE_ENV = "DUPLEX_CACHE"  # duplex's own cache folder (default ~/.cache/duplex), for read-only model caches


# ---------------------------------------------------------------------------------------------- NVIDIA's archive
def voice_folder(archive: PathLike) -> str:
    """The voice folder of a ``voices.tgz``: ``voices/`` beside it when there (extracted by NVIDIA's code or an
    earlier call), else extracted now, beside it or (read-only cache) under ``$DUPLEX_CACHE``; PromptError when the
    archive is unsafe or holds no ``voices/`` folder."""
    archive = os.fspath(archive)
    beside = os.path.join(os.path.dirname(archive), VOICES_FOLDER)
    if os.path.isdir(beside):
        return beside
    if os.access(os.path.dirname(archive), os.W_OK):
        return _extract(archive, os.path.dirname(archive))
    digest = hashlib.sha256(os.path.realpath(archive).encode()).hexdigest()[:16]
    parent = os.path.join(_cache_dir(), "voices", digest)
    if os.path.isdir(os.path.join(parent, VOICES_FOLDER)):
        return os.path.join(parent, VOICES_FOLDER)
    os.makedirs(parent, exist_ok=True)
    return _extract(archive, parent)


def _cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "duplex")


def _extract(archive: str, parent: str) -> str:
    """Extract ``archive``'s ``voices/`` folder into ``parent`` (through a temporary folder renamed at the end, so a
    half-extracted folder is never taken for a whole one)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(archive, m)
            wanted = [m for m in members if _parts(m.name)[:1] == [VOICES_FOLDER]]
            if not any(m.isfile() for m in wanted):
                raise PromptError(f"{archive}: holds no {VOICES_FOLDER}/ folder of voice files")
            work = tempfile.mkdtemp(prefix=".voices-", dir=parent)
            try:
                for m in wanted:
                    target = os.path.join(work, *_parts(m.name))
                    if m.isdir():
                        os.makedirs(target, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                final = os.path.join(parent, VOICES_FOLDER)
                try:
                    os.rename(os.path.join(work, VOICES_FOLDER), final)
                except OSError:  # another process extracted it first
                    if not os.path.isdir(final):
                        raise
                return final
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PromptError(f"{archive}: cannot extract its voices ({type(e).__name__}: {e})") from None


def _parts(name: str) -> List[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _check_member(archive: str, m: tarfile.TarInfo) -> None:
    """Refuse what could write outside the folder or be anything but data: absolute names, "..", links, devices."""
    name = m.name.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/") or (len(name) > 1 and name[1] == ":"):
        raise PromptError(f"{archive}: refused: the entry {m.name!r} points outside the folder")
    if not (m.isfile() or m.isdir()):
        raise PromptError(f"{archive}: refused: the entry {m.name!r} is a link or a special file")


# ----------------------------------------------------------------------------------------------- finding voices
def list_voices(folders: Iterable[PathLike]) -> List[str]:
    """The voice files in ``folders`` (names, sorted; ``.pt`` and audio files)."""
    names = set()
    for folder in folders:
        if os.path.isfile(folder):  # an archive not extracted (find_voice says why)
            folder = voice_folder(folder)
        if os.path.isdir(folder):
            names.update(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))
                         and not n.startswith("."))
    return sorted(names)


def find_voice(name: PathLike, folders: Sequence[PathLike] = (), where: str = "") -> str:
    """The file of the voice prompt ``name``: a path to a file, else a file of that name in one of ``folders`` (as
    NVIDIA's server joins ``--voice-prompt-dir`` and the client's ``voice_prompt``; a bare name such as ``NATF0``
    also finds ``NATF0.pt``). Otherwise PromptError saying which voices there are (``where``: whose folders)."""
    name = os.fspath(name)
    if os.path.isfile(name):
        return name
    # An archive in the list is one that could not be extracted when the model was found: say why now.
    folders = [voice_folder(f) if os.path.isfile(f) else f for f in map(os.fspath, folders)]
    plain = os.path.basename(name) == name and name not in ("", ".", "..")
    if plain:
        for folder in folders:
            for candidate in (name, name + ".pt"):
                path = os.path.join(os.fspath(folder), candidate)
                if os.path.isfile(path):
                    return path
    if not folders:
        raise PromptError(f"voice prompt {name!r}: no such file, and {where or 'this model'} has no voice folder "
                          "(give a recording or a .pt file, or --voice-prompt-dir)")
    known = list_voices(folders)
    shown = ", ".join(known[:24]) + (" ..." if len(known) > 24 else "") if known else "none"
    raise PromptError(f"voice prompt {name!r} not found in {', '.join(map(os.fspath, folders))} (voices there: "
                      f"{shown})")


# ------------------------------------------------------------------------------------------------ making voices
def make_voice_file(engine, recording: PathLike, out: PathLike) -> Tuple[int, int]:
    """Write NVIDIA's voice-embedding ``.pt`` of ``recording`` (any audio file, or float mono PCM at the engine's
    rate) for the engine's model, as NVIDIA's ``save_voice_prompt_embeddings`` does: the recording is read,
    normalised to -24 LUFS, encoded, stepped through the model, and the step inputs and the token cache after it
    are saved. Returns (embeddings, frames of the recording)."""
    from ..model.generator import voice_embedding_file  # noqa: PLC0415 - keeps this module light for the CLI
    from ..model.prompts import (  # noqa: PLC0415 - same
        VoicePrompt,
        encode_voice,
        normalize_loudness,
        prompt_frames,
        save_voice_embeddings,
        voice_from_audio,
    )

    constants = engine.prompt_constants
    cfg = engine.lm.config
    if isinstance(recording, np.ndarray):
        pcm = normalize_loudness(recording.astype(np.float64), engine.sample_rate, constants.target_lufs)
        voice = VoicePrompt(codes=encode_voice(engine.mimi, pcm, cfg.model_codebooks), source="recording")
    else:
        voice = voice_from_audio(recording, engine.mimi, cfg.model_codebooks, constants)
    frames = prompt_frames(cfg, voice, (), constants, engine.lm.dtype)
    embeddings, cache = voice_embedding_file(engine.lm, frames.to(engine.device))
    save_voice_embeddings(out, embeddings, cache)
    return embeddings.shape[0], voice.codes.shape[1]


# The default model's voices under NVIDIA's names, from espeak-ng (the voices its synthetic corpus was made with,
# duplex/data/synth): NAT ("natural") the plain US/British voices, VAR ("variety") other accents; F and M the
# female and male variants. (espeak voice, rate in words per minute, pitch 0-100.)
DEFAULT_VOICES: Dict[str, Tuple[str, int, int]] = {
    "NATF0": ("en-us+f1", 170, 60), "NATF1": ("en-us+f2", 160, 65), "NATF2": ("en-gb-x-rp+f3", 170, 60),
    "NATF3": ("en+f4", 180, 55),
    "NATM0": ("en-us+m1", 170, 45), "NATM1": ("en-us+m2", 160, 40), "NATM2": ("en-gb-x-rp+m3", 170, 45),
    "NATM3": ("en+m4", 180, 50),
    "VARF0": ("en-gb-scotland+f1", 165, 60), "VARF1": ("en-029+f2", 170, 65), "VARF2": ("en-gb-x-gbclan+f3", 160, 60),
    "VARF3": ("en-gb-x-rp+f4", 190, 70), "VARF4": ("en-us+f3", 150, 75),
    "VARM0": ("en-gb-scotland+m1", 165, 45), "VARM1": ("en-029+m2", 170, 40), "VARM2": ("en-gb-x-gbclan+m3", 160, 45),
    "VARM3": ("en-gb-x-rp+m7", 190, 35), "VARM4": ("en-us+klatt", 150, 30),
}
DEFAULT_VOICE_TEXT = "hello, how are you? i can tell you the time."


def espeak_recording(voice: str, rate: int, pitch: int, sample_rate: int, text: str = DEFAULT_VOICE_TEXT
                     ) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (float32 mono at ``sample_rate``)."""
    import torch  # noqa: PLC0415 - only voice making needs it here

    from codec.io.audio import resample  # noqa: PLC0415 - same

    from ..data.synth.espeak import Synthesizer  # noqa: PLC0415 - libespeak-ng is optional

    speech = Synthesizer().speak(text, voice=voice, rate=rate, pitch=pitch)
    return resample(torch.from_numpy(speech.audio)[None], speech.sample_rate, sample_rate)[0].numpy()


def build_default_voices(engine, out: PathLike, names: Optional[Iterable[str]] = None,
                         recordings: Optional[Dict[str, PathLike]] = None, progress=None) -> List[str]:
    """A voice folder answering NVIDIA's names for the engine's model in ``out``: each name from
    ``recordings[name]`` when given, else from espeak-ng (``DEFAULT_VOICES``). Returns the files written."""
    os.makedirs(out, exist_ok=True)
    written = []
    for name in names or NVIDIA_VOICE_NAMES:
        if name not in DEFAULT_VOICES and not (recordings and name in recordings):
            raise PromptError(f"no recording for voice {name!r} (NVIDIA's names: {', '.join(NVIDIA_VOICE_NAMES)})")
        source = (recordings or {}).get(name)
        if source is None:
            source = espeak_recording(*DEFAULT_VOICES[name], sample_rate=engine.sample_rate)
        path = os.path.join(os.fspath(out), f"{name}.pt")
        make_voice_file(engine, source, path)
        written.append(path)
        if progress:
            progress(name, path)
    return written
