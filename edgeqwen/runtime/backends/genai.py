"""onnxruntime-genai backend: dynamic-shape decoder graphs with a KV cache held by genai."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class GenaiBackend:
    def __init__(self, folder: Path, runtime: dict[str, Any], threads: int) -> None:
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(folder))
        session = dict(runtime.get("session_options", {}))
        # genai picks one intra-op thread on small machines unless told; 2 threads decode ~1.7x faster on 2 cores.
        session["intra_op_num_threads"] = threads
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self.model = og.Model(config)
        self.context_length = int(runtime["context_length"])
        self.vocab_size = int(runtime["vocab_size"])

    def _generator(self, max_length: int):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return self._og.Generator(self.model, params)

    def teacher_forced_logits(self, ids: Sequence[int], prefill: int) -> np.ndarray:
        """Logits [len(ids) - prefill + 1, V] predicting ids[prefill-1+1 ...]: the prompt ids[:prefill]
        goes in as one prefill step, then each following id one decode step at a time."""
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(np.asarray(ids[:prefill], dtype=np.int32))
        rows = [np.array(gen.get_logits(), dtype=np.float32).reshape(-1, self.vocab_size)[-1]]
        for t in ids[prefill:]:
            gen.append_tokens(np.asarray([t], dtype=np.int32))
            rows.append(np.array(gen.get_logits(), dtype=np.float32).reshape(-1, self.vocab_size)[-1])
        return np.stack(rows)

    def greedy(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        gen = self._generator(len(ids) + max_new_tokens)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        out: list[int] = []
        while len(out) < max_new_tokens and not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out
