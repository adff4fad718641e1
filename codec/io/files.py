"""Files at the codec's edges, both ways. Writing: an interrupted write never leaves half a file (the content goes
to a hidden temporary file beside the target, which is then renamed over it; a rename within one folder is atomic).
Reading: a model file is checked to be a readable regular file before it is opened (``readable_file``)."""

from __future__ import annotations

import json
import os
import stat
from typing import Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


# What a path that is not a regular file is, for the message (the others are all "not a regular file").
_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def readable_file(path: PathLike, what: str, error: type) -> str:
    """``path`` (as a string) when it names a regular file this process may read, else ``error`` with a one-line
    message that starts with ``what`` and says what is wrong: not found (a missing file, a broken link), a folder,
    something that is not a regular file, or a file that cannot be read.

    Every model file (checkpoint, config, tokenizer) goes through this before it is opened: opening a named pipe
    for reading blocks until some process writes to it (a command given one as its model would hang, silently), a
    device never ends, and "not found" must only ever be said of a file that is not there."""
    path = os.fspath(path)
    if not path:
        raise error(f"{what}: the path is empty")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        broken = " (a symbolic link to a missing file)" if os.path.islink(path) else ""
        raise error(f"{what} not found: {path}{broken}") from None
    except NotADirectoryError:
        raise error(f"{what} not found: {path} (part of the path is a file, not a folder)") from None
    except OSError as e:  # permission denied on a folder of the path, a name too long, a loop of links
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {path} is a folder, expected a file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise error(f"{what} {path} is {kind}, expected a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"{what} {path} cannot be read (permission denied)")
    return path


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
