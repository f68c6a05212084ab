"""Teacher-forced comparison of an artifact with its transformers reference.

For every built-in text the reference runs one full forward pass; the artifact takes the first
quarter as one prefill step and then every following token as a decode step, so both the prefill
and the KV-cache path are compared at each position. Then both decode greedily from each prompt.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from edgeqwen.quality.metrics import kl_divergence
from edgeqwen.quality.reference import Reference
from edgeqwen.runtime.session import common_prefix
from edgeqwen.targets import ValidationBounds

PROMPTS: list[tuple[str, str]] = [
    ("english", "The old lighthouse keeper climbed the stairs every evening at dusk. He trimmed the wick, "
                "polished the great lens and watched the ships pass far out on the dark water, counting "
                "their lights until the morning came."),
    ("chinese", "春天来了，山上的花都开了。小河里的水慢慢地流着，孩子们在河边放风筝，老人们坐在树下喝茶聊天，"
                "整个村子都充满了笑声。"),
    ("code", "def fibonacci(n: int) -> list[int]:\n    \"\"\"Return the first n Fibonacci numbers.\"\"\"\n"
             "    result = [0, 1]\n    while len(result) < n:\n        result.append(result[-1] + result[-2])\n"
             "    return result[:n]\n"),
    ("chat", "CHAT"),
]


def compare_logits(ref: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    kl = kl_divergence(ref, test)
    return {
        "positions": int(ref.shape[0]),
        "max_abs_logit_diff": float(np.abs(ref.astype(np.float64) - test).max()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "top1_agreement": float((ref.argmax(-1) == test.argmax(-1)).mean()),
        "_kl": kl,
    }


def validate(engine, reference: Reference, bounds: ValidationBounds, log=print) -> dict[str, Any]:
    t0 = time.perf_counter()
    per_prompt, kls = [], []
    for name, text in PROMPTS:
        ids = reference.prompt_ids(name, text)
        prefill = max(1, len(ids) // 4)
        art_ids = engine.encode(reference.tokenizer.decode(ids))
        ref = reference.logits(ids)[prefill - 1:]
        test = engine.backend.teacher_forced_logits(ids, prefill)
        m = compare_logits(ref, test)
        kls.append(m.pop("_kl"))
        # The chat turn is generated from the whole templated prompt (it ends with the assistant header).
        gen_prompt = ids if text == "CHAT" else ids[:prefill]
        ref_gen = reference.greedy(gen_prompt, bounds.greedy_tokens)
        art_gen = engine.backend.greedy(gen_prompt, bounds.greedy_tokens)
        m["greedy_match"] = common_prefix(ref_gen, art_gen)
        m["greedy_tokens"] = len(ref_gen)
        m["tokenizer_match"] = art_ids == ids
        m["prompt"] = name
        per_prompt.append(m)
        log(f"    {name:8s} positions {m['positions']:3d}  max|dlogit| {m['max_abs_logit_diff']:.2e}  "
            f"KL mean {m['kl_mean']:.2e}  top1 {m['top1_agreement']:.1%}  greedy {m['greedy_match']}/{m['greedy_tokens']}")
    allkl = np.concatenate(kls)
    summary = {
        "positions": int(allkl.size),
        "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in per_prompt),
        "kl_mean": float(allkl.mean()),
        "kl_p99": float(np.percentile(allkl, 99)),
        "kl_max": float(allkl.max()),
        "top1_agreement": float(np.mean([p["top1_agreement"] for p in per_prompt])),
        "greedy_match_min": min(p["greedy_match"] for p in per_prompt),
        "tokenizer_match": all(p["tokenizer_match"] for p in per_prompt),
    }
    failures = _check(summary, bounds)
    return {
        "passed": not failures,
        "failures": failures,
        "bounds": {k: v for k, v in bounds.__dict__.items()},
        "summary": summary,
        "prompts": per_prompt,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _check(s: dict[str, Any], b: ValidationBounds) -> list[str]:
    fails = []
    if not s["tokenizer_match"]:
        fails.append("artifact tokenizer gives different ids than the reference tokenizer")
    checks = [
        ("max_abs_logit_diff", b.max_abs_logit_diff, "<="),
        ("kl_mean", b.max_kl_mean, "<="),
        ("kl_p99", b.max_kl_p99, "<="),
        ("top1_agreement", b.min_top1_agreement, ">="),
        ("greedy_match_min", b.min_greedy_match, ">="),
    ]
    for key, bound, op in checks:
        if bound is None:
            continue
        v = s[key]
        ok = v <= bound if op == "<=" else v >= bound
        if not ok or (isinstance(v, float) and math.isnan(v)):
            fails.append(f"{key} = {v:.4g}, bound {op} {bound}")
    return fails
