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

from edgeqwen.bench.metrics import per_token, summarize


def default_text() -> tuple[str, str]:
    """A text that needs no network: the CPython stdlib modules held out from the small trained
    model's training (edgeqwen.build.trained), so it never saw them."""
    from edgeqwen.build.trained import read_texts, split_corpus

    return read_texts(split_corpus()[1]), "cpython-stdlib-heldout"


def evaluate(engine, reference_path: str | Path, text: str, window: int = 512, max_tokens: int = 4096,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    from edgeqwen.validate import Reference

    t0 = time.perf_counter()
    ids = engine.encode(text)[: max_tokens + 1]
    window = min(window, engine.context_length)
    reference = Reference(reference_path)
    parts = []
    starts = list(range(0, len(ids) - 1, window))
    for n, s in enumerate(starts, 1):
        chunk = ids[s:s + window]
        if len(chunk) < 2:
            break
        # [W-1, V] logits each; only per-token numbers are kept (a 4096-token text of 151,936-way
        # logits would be 2.5 GB)
        ref = reference.logits(chunk)[:-1]
        test = engine.backend.teacher_forced_logits(chunk, prefill=1)[:-1]
        parts.append(per_token(ref, test, np.asarray(chunk[1:])))
        log(f"    quality window {n}/{len(starts)}: {sum(len(p['kl']) for p in parts)} tokens scored")
    summary = summarize(parts)
    summary.update({"window": window, "seconds": round(time.perf_counter() - t0, 1)})
    return summary
