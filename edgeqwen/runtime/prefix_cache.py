"""Recent sequences kept warm between requests, so a request that resends a conversation prefills only
what is new.

OpenAI clients resend the whole history with every request. When a request ends, its sequence's state
is copied out (a full Snapshot: KV positions and fixed tensors) and its backend row given back; the next
request whose prompt shares a prefix with a parked sequence restores it into a fresh state and feeds
only the rest. A sequence whose state cannot be cut back (fixed-size recurrent layers) also parks the
light snapshots it took at turn boundaries (the end of each prompt), so a history that differs from what
was generated (a template that drops earlier thinking, a client that edits an answer) restarts from the
last boundary before the difference instead of from zero.

Bounded in bytes (least recently used first out); ``cached_tokens`` and the hit counters say how much it
saved.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from edgeqwen.runtime.backends import Snapshot, State

MIN_REUSE = 16  # fewer shared tokens than this: a fresh state is as fast as restoring one


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)
class Parked:
    snapshot: Snapshot  # full: where the sequence ended
    marks: list[Snapshot]  # light snapshots at earlier positions (fixed-state models only)
    used: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return self.snapshot.nbytes + sum(m.nbytes for m in self.marks)


@dataclass(frozen=True)
class Taken:
    """A state ready for a prompt: ``keep`` of its tokens already in it (feed ``ids[keep:]``), and the
    marks that still apply to it."""

    state: State
    keep: int
    marks: list[Snapshot]


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parked: list[Parked] = []
        self._lock = threading.Lock()
        self.lookups = self.hits = self.cached_tokens = self.evictions = 0

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._parked)

    def take(self, backend, ids: Sequence[int], capacity: int) -> Taken:
        """A state for prompt ``ids``: a parked one restored to the longest prefix it shares with them
        (at least one token is always left to feed, for the logits), or a fresh one."""
        with self._lock:
            self.lookups += 1
            best = max(self._parked, key=lambda p: common_prefix(p.snapshot.tokens, ids), default=None)
            shared = common_prefix(best.snapshot.tokens, ids) if best else 0
            if best is None or min(shared, len(ids) - 1) < MIN_REUSE:
                return Taken(backend.new_state(capacity), 0, [])
            self._parked.remove(best)
        state = backend.new_state(capacity)
        try:
            keep, marks = _restore(state, best, min(shared, len(ids) - 1))
        except BaseException:
            state.close()
            raise
        if keep < MIN_REUSE:  # nothing usable before the difference: start clean
            state.close()
            return Taken(backend.new_state(capacity), 0, [])
        with self._lock:
            self.hits += 1
            self.cached_tokens += keep
        return Taken(state, keep, marks)

    def park(self, state: State, marks: list[Snapshot]) -> None:
        """Copy ``state`` out and close it (its row goes back to the backend); the oldest parked
        sequences leave while over the byte bound."""
        try:
            if self.max_bytes <= 0 or not state.snapshots or len(state.tokens) < MIN_REUSE:
                return
            entry = Parked(state.snapshot(kv=True), [m for m in marks if len(m.tokens) <= len(state.tokens)])
        finally:
            state.close()
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            # a sequence that continues a parked one (the next turn) replaces it
            self._parked = [p for p in self._parked if common_prefix(p.snapshot.tokens, entry.snapshot.tokens)
                            < len(p.snapshot.tokens)]
            self._parked.append(entry)
            self._parked.sort(key=lambda p: p.used)
            while self.nbytes > self.max_bytes:
                self._parked.pop(0)
                self.evictions += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._parked), "bytes": self.nbytes, "lookups": self.lookups, "hits": self.hits,
                    "cached_tokens": self.cached_tokens, "evictions": self.evictions}


def _restore(state: State, parked: Parked, shared: int) -> tuple[int, list[Snapshot]]:
    """Put ``parked`` into ``state`` and move it back to at most ``shared`` tokens: cut back where the state
    allows it, else the last mark at or before ``shared``. -> (tokens kept, marks still valid)."""
    state.restore(parked.snapshot)
    if shared >= len(parked.snapshot.tokens):
        return len(state.tokens), parked.marks
    if state.truncatable:
        state.rewind(shared)
        return shared, [m for m in parked.marks if len(m.tokens) <= shared]
    usable = [m for m in parked.marks if len(m.tokens) <= shared]
    if not usable:
        return 0, []
    mark = max(usable, key=lambda m: len(m.tokens))
    state.restore(mark)
    return len(mark.tokens), [m for m in usable if len(m.tokens) <= len(mark.tokens)]
