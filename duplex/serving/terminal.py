"""The model's words and a status line (progress, latency) on one terminal, without either erasing the other.

A status line rewrites itself with a carriage return. Printed beside streaming words on the same terminal, each
update returned to the start of the words' line and wrote over them. So one writer owns the screen: the words
fill lines that it breaks itself (so none wraps), and the status sits on the line below the words in progress;
an update redraws those two lines, finished lines of words scroll up untouched.

Off a terminal nothing is redrawn: words go out as they come, and the status is shown only where it lands on a
terminal of its own (words piped to a file, status on the screen).
"""

from __future__ import annotations

import shutil
import sys
from typing import Optional, TextIO

CLEAR_LINE = "\r\x1b[K"  # to the start of the line, and erase it
UP = "\x1b[1A"


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LiveText:
    """``write(piece)`` for the model's words, ``status(line)`` for the line that keeps changing, ``message(line)``
    for a notice of its own, ``close()`` at the end (the words stay, the status goes). ``out``: the words (default stdout); ``status_out``: the status
    (default stderr). ``width``: the terminal's columns (default: asked of the terminal when drawing)."""

    def __init__(self, out: Optional[TextIO] = None, status_out: Optional[TextIO] = None,
                 width: Optional[int] = None):
        self.out = out if out is not None else sys.stdout
        self.status_out = status_out if status_out is not None else sys.stderr
        self.shared = _is_terminal(self.out) and _is_terminal(self.status_out)  # one screen: redraw both
        self.status_only = not self.shared and _is_terminal(self.status_out)
        self._width = width
        self._line = ""  # the words of the line in progress (shared mode)
        self._status = ""
        self._drawn = False  # the two bottom lines (words in progress, status) are on the screen
        self._open_line = False  # unshared: words written since the last newline

    @property
    def width(self) -> int:
        return max(10, (self._width or shutil.get_terminal_size().columns) - 1)

    def write(self, piece: str) -> None:
        if not self.shared:
            if piece:
                self.out.write(piece)
                self.out.flush()
                self._open_line = not piece.endswith("\n")
            return
        finished = []
        for i, part in enumerate(piece.split("\n")):
            if i:
                finished.append(self._line)
                self._line = ""
            self._line += part
            while len(self._line) > self.width:  # break at the last space that fits (or mid-word if none)
                cut = self._line.rfind(" ", 1, self.width + 1)
                cut = self.width if cut <= 0 else cut
                finished.append(self._line[:cut])
                self._line = self._line[cut:].lstrip(" ")
        self._redraw(finished)

    def status(self, line: str) -> None:
        if self.shared:
            self._status = line[: self.width]
            self._redraw([])
        elif self.status_only:
            self._status = line
            self.status_out.write(CLEAR_LINE + line)
            self.status_out.flush()

    def message(self, line: str) -> None:
        """A line of its own (a server's notice) on the status stream, above the words in progress and the status,
        which are drawn again below it."""
        if self.shared:
            self._redraw([line])
        elif self.status_only:
            self.status_out.write(CLEAR_LINE + line + "\n" + self._status)
            self.status_out.flush()
        else:
            self.status_out.write(line + "\n")
            self.status_out.flush()

    def close(self) -> None:
        """Leave the words on the screen, the cursor on a fresh line, and no status."""
        if self.shared:
            self._status = ""
            if not (self._drawn or self._line):
                return
            text = (self._erase() if self._drawn else "") + self._line + "\n"
            self._line, self._drawn = "", False
            self.out.write(text)
            self.out.flush()
            return
        if self.status_only:
            self.status_out.write(CLEAR_LINE)
            self.status_out.flush()
        if self._open_line:
            self.out.write("\n")
            self.out.flush()
            self._open_line = False

    def _erase(self) -> str:
        return CLEAR_LINE + UP + CLEAR_LINE  # the status line, then the words in progress above it

    def _redraw(self, finished) -> None:
        text = self._erase() if self._drawn else ""
        text += "".join(line + "\n" for line in finished) + self._line + "\n" + self._status
        self._drawn = True
        self.out.write(text)
        self.out.flush()
