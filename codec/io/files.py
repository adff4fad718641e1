"""Writing files so that an interrupted write never leaves half a file: the content goes to a hidden temporary
file beside the target, which is then renamed over it (a rename within one folder is atomic)."""

from __future__ import annotations

import json
import os
from typing import Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def write_atomically(path: PathLike, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` then rename it to ``path``. Through a symlink the target is replaced, not the
    link. The result has the permissions of the file it replaces, or those of any new file the user creates (some
    writers, such as safetensors, create private 0600 files). The temporary name keeps ``path``'s extension
    (writers such as soundfile pick the format by it) and starts with a dot, so a leftover is not picked up by
    ``*.wav``-style globs; it is removed when ``write`` fails."""
    path = os.path.realpath(os.fspath(path))
    folder, name = os.path.split(path)
    base, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{base}.partial-{os.getpid()}{extension}")
    try:
        write(temporary)
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~umask()
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask can only swap it, which is not
    thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str, data: dict) -> None:
    """A JSON file (a config), written atomically."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)

    write_atomically(path, write)
