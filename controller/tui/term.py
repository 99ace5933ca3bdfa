"""Terminal output for slow serial lines: rich renders a frame into a cell grid, only changed cells go out.

A serial console at 115200 8N1 moves 11.5 kB/s; a full 80x24 repaint with colour is 3-6 kB, so a naive
refresh loop would saturate the line. `DiffScreen` keeps the grid last sent and, per row, writes only the
runs of cells that changed (runs closer than a cursor move are merged), with SGR codes only when the
style changes. Output uses nothing beyond VT100 (CUP, ED, EL, SGR 0/1/4/7) plus ANSI colours 30-37 in
colour mode and DECTCEM (cursor hide, ignored by a true VT100).
"""
from __future__ import annotations

import io
import os
import termios
import tty

ASCII_MAP = str.maketrans({"°": "", "─": "-", "━": "-", "│": "|", "┃": "|", "┌": "+", "┐": "+", "└": "+",
                           "┘": "+", "├": "+", "┤": "+", "┬": "+", "┴": "+", "┼": "+", "…": ".", "—": "-",
                           "–": "-", "▁": "_", "▂": "_", "▃": ".", "▄": "o", "▅": "o", "▆": "O", "▇": "#",
                           "█": "#", "•": "*", "✓": "v", "✗": "x", "↑": "^", "↓": "v", "→": ">", "←": "<",
                           "±": "+", "µ": "u", "▲": "^", "▼": "v", "·": "."})


class DiffScreen:
    """Render rich renderables to `fd` with minimal bytes. `ascii`: no colour, 7-bit characters only."""

    def __init__(self, fd: int, width: int, height: int, ascii: bool = False):
        from rich.console import Console
        self.fd = fd
        self.width, self.height = width, height
        self.ascii = ascii
        self.console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True,
                               color_system=None if ascii else "standard", legacy_windows=False,
                               emoji=False, highlight=False, markup=True)
        self.prev: list[list[tuple[str, str]]] | None = None
        self.bytes_written = 0
        self._sgr_cache: dict = {}

    # -- styles ------------------------------------------------------------------------------------
    def _sgr(self, style) -> str:
        if style is None:
            return ""
        key = style
        cached = self._sgr_cache.get(key)
        if cached is not None:
            return cached
        codes = []
        if style.bold:
            codes.append("1")
        if style.underline:
            codes.append("4")
        if style.reverse:
            codes.append("7")
        if not self.ascii:
            from rich.color import ColorSystem
            for color, fg in ((style.color, True), (style.bgcolor, False)):
                if color is not None and not color.is_default:
                    codes.extend(color.downgrade(ColorSystem.STANDARD).get_ansi_codes(foreground=fg))
        sgr = ";".join(codes)
        self._sgr_cache[key] = sgr
        return sgr

    # -- frames ------------------------------------------------------------------------------------
    def grid(self, rows: list) -> list[list[tuple[str, str]]]:
        """rows: renderables, one per band, stacked top to bottom; each gets its own height (a tuple
        (renderable, height)) so a change in one band never shifts another."""
        out: list[list[tuple[str, str]]] = []
        blank = (" ", "")
        for renderable, height in rows:
            opts = self.console.options.update(width=self.width, height=height)
            lines = self.console.render_lines(renderable, opts, pad=True)
            for line in lines[:height]:
                cells = []
                for seg in line:
                    if seg.control:
                        continue
                    sgr = self._sgr(seg.style)
                    text = seg.text.translate(ASCII_MAP) if self.ascii else seg.text
                    if self.ascii:
                        text = text.encode("ascii", "replace").decode()
                    for ch in text:
                        cells.append((ch, sgr))
                cells = (cells + [blank] * self.width)[:self.width]
                out.append(cells)
            for _ in range(height - min(height, len(lines))):
                out.append([blank] * self.width)
        out = (out + [[blank] * self.width for _ in range(self.height)])[:self.height]
        out[-1][-1] = blank          # never write the bottom-right cell (auto-wrap would scroll)
        return out

    def draw(self, rows: list) -> int:
        """Send the difference to the previous frame; returns bytes written."""
        new = self.grid(rows)
        parts = []
        prev = self.prev
        if prev is None:
            parts.append("\x1b[0m\x1b[H\x1b[2J\x1b[?25l")
            prev = [[(" ", "")] * self.width for _ in range(self.height)]
        cur_sgr = "" if self.prev is not None else ""
        parts_sgr = [cur_sgr]
        for r in range(self.height):
            old_row, new_row = prev[r], new[r]
            if old_row == new_row:
                continue
            changed = [c for c in range(self.width) if old_row[c] != new_row[c]]
            runs = []
            start = last = changed[0]
            for c in changed[1:]:
                if c - last > 6:                      # a gap longer than a cursor move: new run
                    runs.append((start, last))
                    start = c
                last = c
            runs.append((start, last))
            for a, b in runs:
                parts.append(f"\x1b[{r + 1};{a + 1}H")
                for c in range(a, b + 1):
                    ch, sgr = new_row[c]
                    if sgr != parts_sgr[0]:
                        parts.append(f"\x1b[0;{sgr}m" if sgr else "\x1b[0m")
                        parts_sgr[0] = sgr
                    parts.append(ch)
        if parts_sgr[0]:
            parts.append("\x1b[0m")
        self.prev = new
        data = "".join(parts)
        if not data:
            return 0
        raw = data.encode("ascii" if self.ascii else "utf-8", "replace")
        self._write(raw)
        return len(raw)

    def _write(self, raw: bytes) -> None:
        view = memoryview(raw)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.bytes_written += n

    def invalidate(self) -> None:
        self.prev = None

    def restore(self) -> None:
        try:
            self._write(b"\x1b[0m\x1b[H\x1b[2J\x1b[?25h")
        except OSError:                   # the terminal is gone (hangup): nothing to restore
            pass


class RawTerminal:
    """cbreak-style raw input on a tty (no echo, no line buffering); restores on exit."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = None

    def __enter__(self):
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
            attrs = termios.tcgetattr(self.fd)
            attrs[1] |= termios.OPOST | termios.ONLCR     # keep output post-processing for stray prints
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def terminal_size(fd: int) -> tuple[int, int]:
    """The tty's size; serial consoles often report 0x0: then 80x24 (the VT100)."""
    try:
        cols, rows = os.get_terminal_size(fd)
    except OSError:
        cols, rows = 0, 0
    if cols < 80 or rows < 24:
        return 80, 24
    return min(cols, 160), min(rows, 60)
