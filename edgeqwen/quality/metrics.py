"""Quality numbers from logits (numpy only): KL divergence, perplexity, top-1 agreement.

Definitions follow llama.cpp's ``llama-perplexity --kl-divergence``: KL(P_ref || P_test) per token in
nats, perplexity = exp(mean negative log-likelihood of the actual next token).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P_test) per row, in nats. Shapes [N, V] -> [N]."""
    lp, lq = log_softmax(ref_logits), log_softmax(test_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row: logits [N, V] predicting targets [N]."""
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(np.mean(nll)))


def per_token(ref_logits: np.ndarray, test_logits: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The per-token quantities of one window; small enough to keep for a whole text, unlike the logits."""
    return {
        "kl": kl_divergence(ref_logits, test_logits),
        "nll_test": token_nll(test_logits, targets),
        "nll_ref": token_nll(ref_logits, targets),
        "agree": ref_logits.argmax(-1) == test_logits.argmax(-1),
    }


def summarize(parts: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    kl, agree = np.concatenate([p["kl"] for p in parts]), np.concatenate([p["agree"] for p in parts])
    nll_test, nll_ref = np.concatenate([p["nll_test"] for p in parts]), np.concatenate([p["nll_ref"] for p in parts])
    return {
        "tokens": int(len(kl)),
        "perplexity": perplexity(nll_test),
        "reference_perplexity": perplexity(nll_ref),
        "kl_mean": float(kl.mean()),
        "kl_p90": float(np.percentile(kl, 90)),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "top1_agreement": float(agree.mean()),
    }


def quality_summary(ref_logits: np.ndarray, test_logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    return summarize([per_token(ref_logits, test_logits, targets)])
