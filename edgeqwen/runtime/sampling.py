"""Next-token choice from one row of logits: greedy or sampled, in the order transformers applies them
(repetition penalty, then temperature, top-k, top-p, min-p), with vLLM's presence penalty (on the
generated tokens) before them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0  # 0 = off; keeps tokens with probability >= min_p x the top token's
    presence_penalty: float = 0.0  # subtracted once from the logit of every token generated so far
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if not -2 <= self.presence_penalty <= 2:
            raise ValueError("presence_penalty must be in [-2, 2]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Constraint(Protocol):
    """A grammar that limits which tokens may come next (structured output, forced tool calls)."""

    def mask(self) -> np.ndarray | None:
        """bool [>= V]: the tokens allowed next (end-of-turn ids only where the grammar may end), or
        None where anything goes."""

    def advance(self, token_id: int) -> None:
        """Consume the chosen token."""

    def done(self) -> bool:
        """The grammar is complete: generation must end here."""


def apply_mask(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """A copy of logits [V] with the disallowed tokens at -inf."""
    out = np.full_like(logits, -np.inf)
    keep = allowed[: logits.shape[0]]
    out[keep] = logits[keep]
    return out


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int], generated: Sequence[int] = ()) -> int:
        """logits [V] float32 for the next position; history = prompt + generated ids so far;
        generated = the ids this request generated (the presence penalty's tokens)."""
        p = self.params
        if p.greedy and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0:
            return int(np.argmax(logits))  # the hot path: no copy of the 151,936 logits
        x = logits.astype(np.float64, copy=True)
        if p.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history, dtype=np.int64))
            seen = seen[seen < x.shape[0]]
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.presence_penalty != 0.0 and len(generated):
            out = np.unique(np.asarray(generated, dtype=np.int64))
            x[out[out < x.shape[0]]] -= p.presence_penalty
        if p.greedy:
            return int(np.argmax(x))
        x /= p.temperature
        if p.top_k and p.top_k < x.shape[0]:
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x[x < kth] = -np.inf
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            # keep the smallest set whose mass reaches top_p (the token that crosses it included)
            cut = int(np.searchsorted(cum, p.top_p)) + 1
            keep = order[:cut]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        if p.min_p > 0.0:
            probs = np.where(probs >= p.min_p * probs.max(), probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.shape[0], p=probs))
