"""edgeqwen itself, through the same run/logits interface as the other peers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class EdgeQwenPeer:
    def __init__(self, folder: Path, threads: int | None) -> None:
        from edgeqwen.runtime import load

        self.engine = load(folder, threads=threads)
        self.threads = self.engine.threads
        self.name = f"edgeqwen {self.engine.manifest['profile']['name']}"
        self.size_bytes = sum(f["bytes"] for f in self.engine.manifest["files"].values())  # the whole artifact

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        """(prefill tok/s, decode tok/s, generated ids) for one greedy generation."""
        r = self.engine.generate(ids, max_new_tokens=new_tokens, stop_tokens=[])
        return r.metrics.prefill_tokens_per_s, r.metrics.decode_tokens_per_s, r.token_ids

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.engine.backend.teacher_forced_logits(ids, prefill=1)  # [len(ids), V]
