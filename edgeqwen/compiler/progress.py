"""Progress lines for long build steps: numbered steps with timings, and a filter for chatty tools."""

from __future__ import annotations

import io
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from edgeqwen.runtime.memory import peak_rss_with_children_mb


class Progress:
    def __init__(self, total_steps: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total = total_steps
        self.n = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        # peak RSS after each step: the build's process or its largest child (monotonic)
        self.peak_rss_mb: dict[str, int] = {}

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
        rss = peak_rss_with_children_mb()
        self.peak_rss_mb[title] = rss
        self.say(f"[{self.n}/{self.total}] {title}: done in {dt:.1f}s (peak RSS so far {rss} MB)")


class LineFilter(io.TextIOBase):
    """Turn a chatty tool's stdout into progress lines a person needs: ``rewrite`` maps a line to the
    text to show, or None to drop it (cache paths, tool banners)."""

    def __init__(self, progress: Progress, rewrite: Callable[[str], str | None] = lambda line: None,
                 prefix: str = "    ") -> None:
        self.progress, self.rewrite, self.prefix, self.buf = progress, rewrite, prefix, ""

    def write(self, s: str) -> int:
        self.buf += s.replace("\r", "\n")
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            text = self.rewrite(line.strip())
            if text:
                self.progress.say(self.prefix + text)
        return len(s)


class LayerCounter:
    """The model builder's "Reading layer 7" lines as "layer 8/24, 12 s elapsed, ~24 s left"."""

    def __init__(self, layers: int) -> None:
        self.layers, self.t0 = layers, time.perf_counter()

    def __call__(self, line: str) -> str | None:
        elapsed = time.perf_counter() - self.t0
        if line.startswith("Reading layer"):
            done = int(line.split()[-1]) + 1
            left = elapsed / done * (self.layers - done)
            return f"ModelBuilder: layer {done}/{self.layers} read, {elapsed:.0f} s elapsed, ~{left:.0f} s left"
        if line.startswith("Reading embedding"):
            return "ModelBuilder: embedding read"
        if line.startswith("Reading LM head"):
            return f"ModelBuilder: lm_head read, {elapsed:.0f} s elapsed"
        if line.startswith("Saving ONNX"):
            return "ModelBuilder: writing the ONNX graph"
        return None
