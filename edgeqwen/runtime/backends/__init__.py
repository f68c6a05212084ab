"""Backends execute an artifact's graphs; the manifest's ``runtime.backend`` picks one.

A backend is a module with a class that follows ``Backend`` below, registered by one line in
``_BACKENDS``: the engine, the compiler and the CLI need no edits for a new one. Modules are imported
only when an artifact needs them, so an app carries only the backend it uses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from edgeqwen.artifact import RuntimeSpec
from edgeqwen.errors import ArtifactError

# runtime.backend -> "module:Class"
_BACKENDS = {
    "genai": "edgeqwen.runtime.backends.genai:GenaiBackend",  # dynamic-KV graphs, KV cache held by genai
    "static": "edgeqwen.runtime.backends.static:StaticBackend",  # fixed shapes, KV as numpy buffers
    # genai graphs stepped by plain onnxruntime, sequences joining and leaving one shared batch (serve)
    "batched": "edgeqwen.runtime.backends.batched:BatchedBackend",
}


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A sequence's state at one position, copied out of the backend: the tokens seen so far, every fixed
    tensor's row, and (a full snapshot) every KV tensor's first ``len(tokens)`` positions.

    A light snapshot (``kv`` None) is a fraction of the size (a recurrent layer's state, not the cache):
    it restores only into the state it came from while that still holds its tokens as a prefix (the KV
    positions below are then the ones it saw). A full snapshot restores into any state of the backend."""

    tokens: tuple[int, ...]
    fixed: dict[str, np.ndarray]  # state input name -> the row (no batch axis)
    kv: dict[str, np.ndarray] | None  # state input name -> the row's first len(tokens) positions

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.fixed.values()) + sum(a.nbytes for a in (self.kv or {}).values())


class State(Protocol):
    """One sequence's state: per layer what the manifest's ``runtime.layers`` describes (a KV cache, or a
    fixed-size state such as a recurrent layer's)."""

    tokens: list[int]  # the ids the state has seen, in order
    truncatable: bool  # every layer can be rewound (runtime.truncatable): rewind works
    snapshots: bool  # snapshot / restore work (else they raise NotImplementedError)

    def append(self, ids: Sequence[int]) -> np.ndarray:
        """Run ``ids`` (state kept); return the next-token logits [V] after the last one."""

    def rewind(self, n: int) -> None:
        """Forget every token from position ``n`` on. A no-op where ``n >= len(tokens)``; otherwise only
        for a truncatable state (raises NotTruncatable): a caller that must go back checks
        ``truncatable`` and else starts a fresh state and prefills again."""

    def close(self) -> None:
        """Release what the sequence holds (a no-op where the state is plain memory)."""

    def snapshot(self, kv: bool = True) -> Snapshot:
        """A copy of the state as it is now (``kv`` False: a light one, see Snapshot)."""

    def restore(self, snap: Snapshot) -> None:
        """Make the state what ``snap`` copied (its tokens, its tensors); raises ValueError for a light
        snapshot whose tokens are not a prefix of this state's."""


class Backend(Protocol):
    provider: str  # the execution provider really used ("cpu" where the artifact's is missing)
    context_length: int
    vocab_size: int

    def __init__(self, folder: Path, runtime: RuntimeSpec, threads: int, provider: str | None = None) -> None: ...

    def new_state(self, capacity: int) -> State:
        """An empty sequence able to hold at least ``capacity`` tokens (it may grow later)."""

    def teacher_forced_logits(self, ids: Sequence[int], prefill: int, out: np.ndarray | None = None) -> np.ndarray:
        """Logits [len(ids) - prefill + 1, V]: ids[:prefill] as one prefill step, then each further id
        as one decode step (validation and quality reports). ``out``: a float32 array of at least that many
        rows to write them into (a caller scoring chunk after chunk reuses one buffer: first-touching a
        fresh 311 MB array costs more than the decode steps that fill it); the rows' view is returned."""

    def greedy(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids`` straight through the backend (validation)."""


class NoSnapshots:
    """For states that rewind in place and have nothing to copy out (KV-only, one sequence at a time)."""

    snapshots = False

    def snapshot(self, kv: bool = True) -> Snapshot:
        raise NotImplementedError(f"{type(self).__name__} keeps no snapshots; rewind it instead")

    def restore(self, snap: Snapshot) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no snapshots; rewind it instead")


class NotTruncatable(RuntimeError):
    """rewind asked of a state that cannot forget tokens (a fixed state has folded them all in). A bug
    in the caller, which checks ``State.truncatable`` first."""


def check_rewind(state: State, n: int) -> bool:
    """Whether rewind(n) has anything to cut; raises NotTruncatable where it has and cannot."""
    if n >= len(state.tokens):
        return False
    if not state.truncatable:
        raise NotTruncatable(f"cannot rewind a state with fixed-size layers from {len(state.tokens)} to {n} "
                             "tokens; start a fresh state and prefill again")
    return True


def logit_rows(out: np.ndarray | None, rows: int, vocab: int) -> np.ndarray:
    """[rows, vocab] float32 to fill: a view of the caller's buffer ``out``, or a new array."""
    if out is None:
        return np.empty((rows, vocab), dtype=np.float32)
    if out.dtype != np.float32 or out.ndim != 2 or out.shape[0] < rows or out.shape[1] != vocab:
        raise ValueError(f"out must be float32 [>= {rows}, {vocab}], got {out.dtype} {list(out.shape)}")
    return out[:rows]


def known_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def create(folder: Path, spec: RuntimeSpec, threads: int, provider: str | None = None,
           name: str | None = None) -> Backend:
    """The manifest's backend, or ``name`` where the caller picks one the artifact's graphs allow."""
    target = _BACKENDS.get(name or spec.backend)
    if target is None:
        raise ArtifactError(f"artifact {folder}: unknown runtime backend {name or spec.backend!r}; this edgeqwen "
                            f"has {', '.join(_BACKENDS)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(folder, spec, threads, provider)


class StateLoops:
    """``teacher_forced_logits`` and ``greedy`` for a backend whose States do all the work (static,
    batched): one prefill append, then one append per token; the state is closed afterwards."""

    def new_state(self, capacity: int) -> State:
        raise NotImplementedError

    def teacher_forced_logits(self, ids: Sequence[int], prefill: int, out: np.ndarray | None = None) -> np.ndarray:
        state = self.new_state(len(ids))
        try:
            first = state.append(ids[:prefill])
            out = logit_rows(out, len(ids) - prefill + 1, first.shape[-1])
            out[0] = first
            for i, t in enumerate(ids[prefill:], 1):
                out[i] = state.append([t])
            return out
        finally:
            state.close()

    def greedy(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        state = self.new_state(len(ids) + max_new_tokens)
        try:
            logits, out = state.append(ids), []
            while len(out) < max_new_tokens:
                out.append(int(logits.argmax()))
                if len(out) < max_new_tokens:
                    logits = state.append(out[-1:])
            return out
        finally:
            state.close()
