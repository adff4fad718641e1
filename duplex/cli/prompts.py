"""The system-prompt options of ``duplex offline``, ``mic`` and ``bench turns run`` (``--voice-prompt``,
``--voice-prompt-dir``, ``--text-prompt``, NVIDIA's names): parsing only; the voices are found by
``runtime.voices.find_voice`` and the prompt built by ``Engine.system_prompt``."""

from __future__ import annotations

import sys
from typing import Optional

from ..model.prompts import NVIDIA_ASSISTANT_PROMPT, PromptFrames
from ..runtime.checkpoints import PERSONAPLEX_REPOS
from ..runtime.voices import NVIDIA_VOICE_NAMES, VOICES_ARCHIVE, find_voice


def add_prompt_options(p, text_default: str) -> None:
    """``--voice-prompt``, ``--voice-prompt-dir``, ``--text-prompt`` (``text_default``: what the help says the
    default is)."""
    p.add_argument("--voice-prompt", metavar="VOICE", help="system prompt: the voice, an audio file (any recording, "
                   "normalised to -24 LUFS), a voice-embedding .pt in NVIDIA's layout (made for this model: 'duplex "
                   f"voices make'), or a name in --voice-prompt-dir or the model's voices ({', '.join(NVIDIA_VOICE_NAMES[:2])}"
                   f" ... {NVIDIA_VOICE_NAMES[-1]}, with or without .pt)")
    p.add_argument("--voice-prompt-dir", metavar="DIR", help="where --voice-prompt names are looked up (default: the "
                   "model's voices: voices.tgz of a PersonaPlex repository, the default model's own folder)")
    p.add_argument("--text-prompt", metavar="TEXT", help="system prompt: the role text, wrapped in <system> tags as "
                   f"NVIDIA does; '' for none ({text_default})")


def text_prompt(args, engine, persona_default: Optional[str] = NVIDIA_ASSISTANT_PROMPT) -> Optional[str]:
    """The role text of the options: --text-prompt when given, else ``persona_default`` for PersonaPlex (its
    makers' default), else none."""
    if args.text_prompt is not None:
        return args.text_prompt or None
    return persona_default if getattr(engine, "persona", False) else None  # stand-in engines have no model


def system_prompt(args, engine, persona_default: Optional[str] = NVIDIA_ASSISTANT_PROMPT) -> Optional[PromptFrames]:
    """The system prompt the options ask for on ``engine`` (None: no prompt)."""
    text = text_prompt(args, engine, persona_default)
    voice = None
    if args.voice_prompt is not None:
        files = getattr(engine, "files", None)
        folders = (args.voice_prompt_dir,) if args.voice_prompt_dir else (files.voice_prompts if files else ())
        where = ""
        if files is not None and files.source.lower() in PERSONAPLEX_REPOS and not folders:
            where = (f"{files.source} (its {VOICES_ARCHIVE} is not in the Hugging Face cache: hf download "
                     f"{files.source} {VOICES_ARCHIVE})")
        voice = find_voice(args.voice_prompt, folders, where)
    if voice is None and not text:
        return None
    frames = engine.system_prompt(voice, text)
    print(f"system prompt: {len(frames)} frames ({len(frames) * engine.frame_size / engine.sample_rate:.1f} s"
          + (f"; voice {voice}" if voice else "") + (f"; role {text!r}" if text else "") + ")", file=sys.stderr)
    return frames
