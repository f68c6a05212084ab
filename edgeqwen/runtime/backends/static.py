"""Static-shape backend: plain onnxruntime sessions over a prefill graph (chunk C) and a decode graph
(chunk 1), with the KV cache as fixed numpy buffers this module owns.

Used for accelerators that need every shape known when the graph is compiled (Android NNAPI). The
graphs' calling convention is described in edgeqwen/compiler/static/decoder.py; everything needed to
drive them (files, chunk, cache length, mask value) comes from the manifest's runtime.static table,
and the state tensors (names, shapes, dtypes) from runtime.layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgeqwen.artifact import BATCH, LayerState, RuntimeSpec, StateTensor, StaticSpec
from edgeqwen.errors import ArtifactError, ContextOverflow
from edgeqwen.providers import PROVIDERS
from edgeqwen.runtime.backends import NoSnapshots, StateLoops, check_rewind
from edgeqwen.runtime.providers import choose


class StaticBackend(StateLoops):
    def __init__(self, folder: Path, runtime: RuntimeSpec, threads: int, provider: str | None = None) -> None:
        spec = runtime.static
        if spec is None:
            raise ArtifactError(f"artifact {folder}: backend 'static' needs the runtime section's static table")
        self._open(folder, spec, runtime.layers, runtime.execution_provider, runtime.session_options, threads,
                   provider)

    @classmethod
    def on_cpu(cls, folder: Path, spec: StaticSpec, threads: int) -> "StaticBackend":
        """The graphs of a build in progress (no manifest yet), on the CPU provider: calibration. Their
        state is what the static flow will write into runtime.layers."""
        backend = cls.__new__(cls)
        backend._open(folder, spec, spec.layer_states(), "cpu", {}, threads, "cpu")
        return backend

    def _open(self, folder: Path, spec: StaticSpec, layers: tuple[LayerState, ...], built_for: str,
              session_options: dict, threads: int, provider: str | None) -> None:
        import onnxruntime as ort

        self.cache = spec.cache_length
        self.tensors = _kv_tensors(folder, layers)
        self.vocab_size = spec.vocab_size
        self.mask_value = np.float32(spec.mask_value)
        self.context_length = self.cache
        # NNAPI exists only in Android builds of onnxruntime: elsewhere the same graphs run on the CPU EP.
        available = {p.name for p in PROVIDERS.values() if p.ort in ort.get_available_providers()}
        self.provider = choose(provider, built_for, available)
        self.providers = list(dict.fromkeys((PROVIDERS[self.provider].ort, PROVIDERS["cpu"].ort)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        for key, value in session_options.items():
            if key == "graph_optimization_level":
                options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        self.sessions, self.chunks, self.output_names = {}, {}, {}
        for role, graph in spec.graphs.items():
            self.sessions[role] = ort.InferenceSession(str(folder / graph.file), options, providers=self.providers)
            self.chunks[role] = graph.chunk
            self.output_names[role] = [o.name for o in self.sessions[role].get_outputs()]

    def new_state(self, capacity: int) -> "StaticState":
        return StaticState(self)


def _kv_tensors(folder: Path, layers: tuple[LayerState, ...]) -> tuple[StateTensor, ...]:
    """Every state tensor, checked to be what these graphs can carry: KV without a batch axis. A fixed
    state is refused: a left-padded chunk would fold its padding into it (a KV cache just masks it)."""
    fixed = sorted({layer.kind for layer in layers if not layer.truncatable})
    if fixed:
        raise ArtifactError(f"artifact {folder}: the static backend handles KV layers only; this artifact has "
                            f"{', '.join(fixed)} layers")
    tensors = tuple(t for layer in layers for t in layer.tensors)
    batched = [t.input for t in tensors if BATCH in t.shape]
    if batched:
        raise ArtifactError(f"artifact {folder}: the static graphs run one sequence, but state tensor {batched[0]} "
                            f"has a {BATCH!r} axis")
    return tensors


class StaticState(NoSnapshots):
    """One sequence: per KV tensor a buffer [KV, S, D] (S the cache length) filled up to len(tokens)."""

    truncatable = True  # the backend takes only KV layers

    def __init__(self, backend: StaticBackend) -> None:
        b = backend
        self.backend = b
        self.buffers = {t.input: np.zeros(t.concrete(1, b.cache), np.dtype(t.dtype)) for t in b.tensors}
        self.tokens: list[int] = []

    def append(self, ids: Sequence[int]) -> np.ndarray:
        """Run ``ids`` through the graphs (prefill chunks, then single tokens); return the next-token
        logits [V] after the last one."""
        ids = list(ids)
        if len(self.tokens) + len(ids) > self.backend.cache:
            raise ContextOverflow(f"{len(self.tokens)} cached + {len(ids)} new tokens exceed the static cache "
                                  f"length {self.backend.cache} this artifact was compiled for")
        logits = None
        chunk = self.backend.chunks["prefill"]
        while ids:
            take = ids[:chunk] if len(ids) > 1 else ids
            logits = self._run("prefill" if len(take) > 1 else "decode", take)
            ids = ids[len(take):]
        return logits

    def rewind(self, n: int) -> None:
        # Slots past n are masked out on the next run and overwritten as tokens arrive.
        if check_rewind(self, n):
            del self.tokens[n:]

    def close(self) -> None:
        pass  # plain numpy buffers

    def _run(self, role: str, ids: list[int]) -> np.ndarray:
        b = self.backend
        c, m, n, s = b.chunks[role], len(ids), len(self.tokens), b.cache
        pad = c - m  # left padding: the last slot is always the newest token
        input_ids = np.zeros(c, np.int32)
        input_ids[pad:] = ids
        positions = np.zeros(c, np.int32)
        positions[pad:] = np.arange(n, n + m, dtype=np.int32)
        mask = np.full((c, s + c), b.mask_value, np.float32)
        mask[pad:, :n] = 0.0  # every real token sees the cached ones
        rows = np.arange(m)
        causal = rows[:, None] >= rows[None, :]  # [m, m]: token j sees chunk tokens up to itself
        mask[pad:, s + pad:] = np.where(causal, 0.0, b.mask_value)
        feed: dict[str, np.ndarray] = {"input_ids": input_ids, "position_ids": positions, "attention_mask": mask,
                                       **self.buffers}
        result = dict(zip(b.output_names[role], b.sessions[role].run(None, feed)))
        for t in b.tensors:
            # present [KV, C, D] holds the chunk's positions, padding first: the real ones go to slots n:n+m
            axis = t.sequence_axis
            self.buffers[t.input][_along(axis, slice(n, n + m))] = result[t.output][_along(axis, slice(pad, c))]
        self.tokens.extend(ids)
        return result["logits"][0]


def _along(axis: int, positions: slice) -> tuple[slice, ...]:
    """An index taking ``positions`` on ``axis`` and everything on the axes before it."""
    return (slice(None),) * axis + (positions,)
