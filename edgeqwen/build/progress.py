"""Progress lines for long build steps: numbered steps with timings, and a filter for chatty tools."""

from __future__ import annotations

import io
import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from edgeqwen.runtime.memory import peak_rss_mb


class Progress:
    def __init__(self, total_steps: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total = total_steps
        self.n = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, int] = {}  # process peak RSS after each step (monotonic)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.n += 1
        self.say(f"[{self.n}/{self.total}] {title} ...")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings[title] = round(dt, 2)
        rss = peak_rss_mb()
        self.peak_rss_mb[title] = rss
        self.say(f"[{self.n}/{self.total}] {title}: done in {dt:.1f}s (peak RSS so far {rss} MB)")


class LineFilter(io.TextIOBase):
    """Forward only interesting lines of a tool's stdout (e.g. the model builder's "Reading layer 7")."""

    def __init__(self, progress: Progress, keep: tuple[str, ...], prefix: str = "    ") -> None:
        self.progress, self.keep, self.prefix, self.buf = progress, keep, prefix, ""

    def write(self, s: str) -> int:
        self.buf += s.replace("\r", "\n")
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.strip().startswith(self.keep):
                self.progress.say(self.prefix + line.strip())
        return len(s)
