"""onnxruntime-genai backend: dynamic-shape decoder graphs with a KV cache held by genai."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeqwen.artifact import RuntimeSpec
from edgeqwen.errors import ArtifactError
from edgeqwen.runtime.backends import NoSnapshots, check_rewind, logit_rows
from edgeqwen.runtime.providers import choose


class GenaiBackend:
    def __init__(self, folder: Path, runtime: RuntimeSpec, threads: int, provider: str | None = None) -> None:
        import onnxruntime_genai as og

        fixed = sorted({layer.kind for layer in runtime.layers if layer.kind != "kv"})
        if fixed:  # genai allocates and steps the state itself, as KV only
            raise ArtifactError(f"artifact {folder}: onnxruntime-genai's backend here handles KV layers only; this "
                                f"artifact has {', '.join(fixed)} layers")
        self._og = og
        available = {"cpu"} | ({"dml"} if og.is_dml_available() else set())
        self.provider = choose(provider, runtime.execution_provider, available)
        config = og.Config(str(folder))
        if self.provider == "cpu":
            config.clear_providers()  # genai_config.json may name dml: the same graph runs on the CPU provider
        session = dict(runtime.session_options)
        # genai picks one intra-op thread on small machines unless told; 2 threads decode ~1.7x faster on 2 cores.
        session["intra_op_num_threads"] = threads
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self.model = og.Model(config)
        self.context_length = runtime.context_length
        self.vocab_size = runtime.vocab_size

    def _generator(self, max_length: int):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return self._og.Generator(self.model, params)

    def new_state(self, capacity: int) -> "GenaiState":
        return GenaiState(self, capacity)

    def teacher_forced_logits(self, ids: Sequence[int], prefill: int, out: np.ndarray | None = None) -> np.ndarray:
        """Logits [len(ids) - prefill + 1, V] predicting ids[prefill-1+1 ...]: the prompt ids[:prefill]
        goes in as one prefill step, then each following id one decode step at a time."""
        gen = self._generator(len(ids) + 1)
        out = logit_rows(out, len(ids) - prefill + 1, self.vocab_size)  # [rows, V], filled in place
        gen.append_tokens(np.asarray(ids[:prefill], dtype=np.int32))
        out[0] = np.asarray(gen.get_logits()).reshape(-1, self.vocab_size)[-1]
        for i, t in enumerate(ids[prefill:], 1):
            gen.append_tokens(np.asarray([t], dtype=np.int32))
            out[i] = np.asarray(gen.get_logits()).reshape(-1, self.vocab_size)[-1]
        return out

    def greedy(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        gen = self._generator(len(ids) + max_new_tokens)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        out: list[int] = []
        while len(out) < max_new_tokens and not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out


class GenaiState(NoSnapshots):
    """One sequence's KV cache inside a genai Generator; grows by re-prefilling when full."""

    truncatable = True  # the backend takes only KV layers

    def __init__(self, backend: GenaiBackend, capacity: int) -> None:
        self.backend = backend
        self.capacity = min(capacity, backend.context_length)
        self.gen = backend._generator(self.capacity)
        self.tokens: list[int] = []

    def append(self, ids: Sequence[int]) -> np.ndarray:
        """Run the model over ``ids`` (KV kept); return the next-token logits [V] after the last one."""
        ids = list(ids)
        if len(self.tokens) + len(ids) > self.capacity:
            self._grow(len(self.tokens) + len(ids))
        self.gen.append_tokens(np.asarray(ids, dtype=np.int32))
        self.tokens.extend(ids)
        return np.asarray(self.gen.get_logits(), dtype=np.float32).reshape(-1, self.backend.vocab_size)[-1]

    def rewind(self, n: int) -> None:
        if check_rewind(self, n):
            self.gen.rewind_to(n)
            del self.tokens[n:]

    def close(self) -> None:
        pass  # the generator's KV buffer goes with the object

    def _grow(self, need: int) -> None:
        # genai sizes the KV buffer at creation (past_present_share_buffer); a larger one means a new
        # generator and one prefill of what was cached.
        cached = self.tokens
        self.capacity = min(self.backend.context_length, max(need, 2 * self.capacity))
        self.gen = self.backend._generator(self.capacity)
        self.tokens = []
        if cached:
            self.gen.append_tokens(np.asarray(cached, dtype=np.int32))
            self.tokens = list(cached)
