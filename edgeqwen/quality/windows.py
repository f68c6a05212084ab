"""Perplexity of an artifact on a text, and its KL divergence from the fp32 transformers reference.

The artifact's graph gives logits for the last fed position only (the lm_head is pruned for prompt
positions), so each window is fed token by token through the KV cache: window W costs W decode steps.
The reference computes each window in one forward pass.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeqwen.quality.metrics import per_token, summarize


def compare_on_windows(reference, ids: list[int], candidates: dict[str, Callable[[list[int]], np.ndarray]],
                       window: int, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Score every candidate against the reference on the same windows of ``ids``.

    A candidate maps a window's ids to logits [len(window), V] (row i predicts id i+1). Per window the
    reference runs once and only per-token numbers are kept (a 4096-token text of 151,936-way logits
    would be 2.5 GB).
    """
    windows = [w for w in (ids[s:s + window] for s in range(0, len(ids) - 1, window)) if len(w) > 1]
    parts: dict[str, list] = {name: [] for name in candidates}
    scored = 0
    for n, w in enumerate(windows, 1):
        ref = reference.logits(w)[:-1]
        targets = np.asarray(w[1:])
        for name, logits in candidates.items():
            parts[name].append(per_token(ref, logits(w)[:-1, : ref.shape[1]], targets))
        scored += len(targets)
        log(f"    quality window {n}/{len(windows)}: {scored} tokens scored")
    return {name: summarize(p) for name, p in parts.items()}


def evaluate(engine, reference_path: str | Path, text: str, window: int = 512, max_tokens: int = 4096,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    from edgeqwen.quality.reference import Reference

    t0 = time.perf_counter()
    ids = engine.encode(text)[: max_tokens + 1]
    window = min(window, engine.context_length)
    artifact = lambda w: engine.backend.teacher_forced_logits(w, prefill=1)  # noqa: E731  [len(w), V]
    summary = compare_on_windows(Reference(reference_path), ids, {"artifact": artifact}, window, log)["artifact"]
    summary.update({"window": window, "seconds": round(time.perf_counter() - t0, 1)})
    return summary
