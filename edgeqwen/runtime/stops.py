"""Stop strings over a stream: text that could still become a stop string is held back, so a stop
string is never half-printed and the text ends right before it."""

from __future__ import annotations

from typing import Sequence


class StopStrings:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit: str | None = None

    def feed(self, text: str) -> str:
        """Add text; return what is safe to release now."""
        if self.hit is not None:
            return ""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        first = min(((i, s) for s in self.stops if (i := self.pending.find(s)) >= 0), default=None)
        if first is not None:
            i, self.hit = first
            out, self.pending = self.pending[:i], ""
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.hit is not None else self.pending), ""
        return out
