"""Words as they arrive and a progress line, on one terminal, without either overwriting the other.

A progress counter is redrawn in place with ``\\r``; the model's words arrive a piece at a time with no newline.
Written naively to the same screen, each redraw wipes the words printed since the last newline. So, when both
streams are a terminal, the bottom line belongs to this class: the progress, then the line of words being
spoken; when that line is full it is printed for good above, and the bottom line is redrawn below it. Words
still go to ``out`` (stdout) and the progress to ``err`` (stderr); when ``out`` is not a terminal (piped to a
file) the words go there as they are, and the progress line on its own terminal disturbs nothing.
"""

from __future__ import annotations

import shutil
import sys
from typing import Optional, TextIO


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LiveText:
    def __init__(self, out: Optional[TextIO] = None, err: Optional[TextIO] = None, width: Optional[int] = None):
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.show_progress = _is_tty(self.err)  # a counter redrawn in place is noise in a log file
        self.shared = self.show_progress and _is_tty(self.out)  # words and progress on one screen
        self.width = max(20, (width or shutil.get_terminal_size().columns) - 1)  # no wrap at the last column
        self.status = ""
        self.line = ""  # words of the line being spoken, not yet printed for good (shared screen only)
        self._drawn = 0  # characters of the bottom line on the screen now
        self._words_written = False

    def words(self, piece: str) -> None:
        """A piece of the model's text, as it arrives."""
        if not self.shared:
            self._words_written = True
            self.out.write(piece)
            self.out.flush()
            return
        self.line += piece
        while "\n" in self.line or len(self._bottom()) > self.width:
            cut = self._cut()
            done, self.line = self.line[:cut].rstrip("\n"), self.line[cut:].lstrip(" \n")
            self._clear()
            self.out.write(done + "\n")
            self.out.flush()
        self._draw()

    def progress(self, text: str) -> None:
        """Replace the progress counter (shown on a terminal only)."""
        if not self.show_progress:
            return
        self.status = text
        self._draw()

    def message(self, text: str) -> None:
        """A line of its own on ``err`` (a notice), above the bottom line."""
        self._clear()
        self.err.write(text + "\n")
        self.err.flush()
        self._draw()

    def close(self) -> None:
        """Print the last words for good, drop the counter, and end on a fresh line."""
        self._clear()
        if self.shared and self.line:
            self.out.write(self.line + "\n")
        elif not self.shared and self._words_written:
            self.err.write("\n")  # the words ran on without a newline (as they arrived)
        self.out.flush()
        self.err.flush()
        self.line = self.status = ""
        self._words_written = False

    def _bottom(self) -> str:
        return " ".join(part for part in (self.status, self.line) if part)

    def _cut(self) -> int:
        """Where the words line breaks: at a newline, else at the last space that fits, else where it must."""
        if "\n" in self.line:
            return self.line.index("\n") + 1
        room = max(1, self.width - (len(self.status) + 1 if self.status else 0))
        space = self.line.rfind(" ", 0, room + 1)
        return space if space > 0 else min(room, len(self.line))

    def _clear(self) -> None:
        if self._drawn:
            self.err.write("\r" + " " * self._drawn + "\r")
            self.err.flush()
            self._drawn = 0

    def _draw(self) -> None:
        if not self.show_progress:
            return
        bottom = self._bottom()[: self.width]
        self.err.write("\r" + bottom + " " * max(0, self._drawn - len(bottom)))
        self.err.flush()
        self._drawn = max(len(bottom), self._drawn)
