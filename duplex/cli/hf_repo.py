"""``--hf-repo REPO``: the files of a published model (Kyutai's Moshiko / Moshika, NVIDIA's PersonaPlex) found in
the local Hugging Face cache. Nothing is downloaded: a missing file is named with the command that fetches it.

A repository's ``config.json`` names its files as Kyutai's ``CheckpointInfo`` reads them (``moshi_name``,
``mimi_name``, ``tokenizer_name``, each a file of the repository or ``hf://owner/repo/path``); a repository without
one is Moshi 7B with Kyutai's default file names (docs/kyutai-compat.md §2.1).
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

from ..errors import UsageError

DEFAULT_NAMES = {"moshi_name": "model.safetensors", "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
                 "tokenizer_name": "tokenizer_spm_32k_3.model"}
# The repositories the README lists: (what it is, download size).
KNOWN_REPOS = {
    "kyutai/moshiko-pytorch-bf16": "Moshiko 7B (male voice), bfloat16",
    "kyutai/moshika-pytorch-bf16": "Moshika 7B (female voice), bfloat16",
    "nvidia/personaplex-7b-v1": "PersonaPlex 7B (NVIDIA's Moshi fine-tune)",
}


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError("--hf-repo reads the Hugging Face cache with the 'huggingface_hub' package: "
                         "pip install huggingface_hub") from None
    return huggingface_hub


def _split_reference(repo: str, name: str) -> Tuple[str, str]:
    """(repository, file) of a file name in a config: ``hf://owner/repo/path`` points into another repository."""
    if name.startswith("hf://"):
        parts = name[len("hf://"):].split("/", 2)
        if len(parts) != 3:
            raise UsageError(f"{repo}: config.json names {name!r}, expected hf://owner/repo/path")
        return f"{parts[0]}/{parts[1]}", parts[2]
    return repo, name


def _cached(repo: str, filename: str, cache_dir: Optional[str]) -> Optional[str]:
    found = _hub().try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def resolve_hf_repo(repo: str, cache_dir: Optional[str] = None) -> Dict[str, Optional[str]]:
    """``{"lm", "lm_config", "mimi", "tokenizer"}`` paths in the local cache (``lm_config`` None: Moshi 7B)."""
    if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
        raise UsageError(f"--hf-repo {repo!r}: expected owner/name, e.g. kyutai/moshiko-pytorch-bf16")
    config_path = _cached(repo, "config.json", cache_dir)
    names = dict(DEFAULT_NAMES)
    if config_path:
        try:
            config = json.loads(open(config_path, encoding="utf-8").read())
        except ValueError as e:
            raise UsageError(f"{config_path}: not JSON ({e})") from None
        names.update({k: config[k] for k in DEFAULT_NAMES if isinstance(config, dict) and k in config})
    wanted = {"lm": _split_reference(repo, names["moshi_name"]), "mimi": _split_reference(repo, names["mimi_name"]),
              "tokenizer": _split_reference(repo, names["tokenizer_name"])}
    found = {key: _cached(where, name, cache_dir) for key, (where, name) in wanted.items()}
    missing = [(where, name) for key, (where, name) in wanted.items() if found[key] is None]
    if missing:
        commands = []
        for where in dict.fromkeys(w for w, _ in missing):
            files = " ".join(name for w, name in missing if w == where)
            extra = " config.json" if where == repo and config_path is None else ""
            commands.append(f"huggingface-cli download {where} {files}{extra}")
        cache = cache_dir or _hub().constants.HF_HUB_CACHE
        raise UsageError(f"--hf-repo {repo}: not in the Hugging Face cache ({cache}): "
                         + ", ".join(f"{w}/{n}" for w, n in missing) + "; fetch with: " + " && ".join(commands))
    return {**found, "lm_config": config_path}


def apply_hf_repo(args) -> None:
    """Fill --lm, --lm-config, --mimi and --tokenizer from --hf-repo (which excludes them)."""
    repo = getattr(args, "hf_repo", None)
    if not repo:
        return
    given = [flag for flag, attr in (("--lm", "lm"), ("--mimi", "mimi"), ("--tokenizer", "tokenizer"),
                                     ("--lm-config", "lm_config"), ("--mimi-config", "mimi_config"))
             if getattr(args, attr, None)]
    if given:
        raise UsageError(f"--hf-repo gives the model files; leave out {', '.join(given)}")
    paths = resolve_hf_repo(repo)
    args.lm, args.lm_config, args.mimi, args.tokenizer = paths["lm"], paths["lm_config"], paths["mimi"], \
        paths["tokenizer"]
    args.mimi_config = None  # Kyutai's Mimi: the official architecture
