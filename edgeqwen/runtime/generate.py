"""The token loop: prefill once, then one decode step per token with the KV cache kept, routing
tokens to reasoning/content, applying stop tokens/strings, budget and cancellation, timing all of it."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from edgeqwen.runtime.chat import ThinkingState
from edgeqwen.runtime.detok import IncrementalDecoder
from edgeqwen.runtime.memory import peak_rss_mb
from edgeqwen.runtime.sampling import Constraint, Sampler, SamplingParams, apply_mask
from edgeqwen.runtime.stops import StopStrings


@dataclass(frozen=True)
class Delta:
    kind: str  # "content" or "reasoning"
    text: str


@dataclass
class Metrics:
    prompt_tokens: int = 0  # tokens fed in this request (only the new ones for a session turn)
    cached_tokens: int = 0  # prompt tokens a kept state already held (a session's cache, the server's prefixes)
    generated_tokens: int = 0
    ttft_s: float = 0.0
    prefill_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    peak_rss_mb: int = 0


@dataclass
class Result:
    text: str
    reasoning: str
    token_ids: list[int]
    finish_reason: str  # "stop", "length" or "cancelled"
    metrics: Metrics
    stop: str | None = None
    sampling: SamplingParams | None = None  # what chose the tokens: the model's defaults with the caller's overrides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    stop_tokens: Sequence[int] = ()
    thinking_budget: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    constraint: Constraint | None = None  # grammar applied to every sampled token


class Stream:
    """Iterate for text deltas; ``result`` is set once the iteration is over. ``cancel()`` is thread-safe."""

    def __init__(self, events: Iterator[Delta], request: Request) -> None:
        self._events = events
        self._request = request
        self.result: Result | None = None

    def __iter__(self) -> Iterator[Delta]:
        for item in self._events:
            if isinstance(item, Result):
                self.result = item
            else:
                yield item

    def cancel(self) -> None:
        self._request.cancel.set()

    def finish(self) -> Result:
        for _ in self:
            pass
        assert self.result is not None
        return self.result


def run(engine, state, new_ids: list[int], req: Request, thinking: ThinkingState | None,
        stop_ids: set[int], cached: int = 0, after_prefill: Callable[[], None] | None = None,
        mark_at: Sequence[int] = ()) -> Iterator[Delta | Result]:
    """Feed ``new_ids`` to ``state`` and generate; yields Deltas, then one Result. ``cached``: the prompt
    tokens the state already held (reported); ``after_prefill``: called once the prompt is in (a turn
    boundary: where a caller keeps a snapshot), and also after the first ``p`` tokens of ``new_ids`` for
    each ``p`` in ``mark_at`` (the prompt then goes in as several appends, split there)."""
    sampler = Sampler(req.sampling)
    decoders = {"content": IncrementalDecoder(engine.tokenizer), "reasoning": IncrementalDecoder(engine.tokenizer)}
    stops = StopStrings(req.stop)
    texts = {"content": [], "reasoning": []}
    started = {"content": False, "reasoning": False}
    generated: list[int] = []
    m = Metrics(prompt_tokens=len(new_ids), cached_tokens=cached)
    finish, hit = "length", None

    def emit(kind: str, text: str) -> Iterator[Delta]:
        if not started[kind]:  # Qwen3 puts newlines right after <think> and </think>; they are layout
            text = text.lstrip("\n")
            started[kind] = bool(text)
        if kind == "content":
            text = stops.feed(text)
        if text:
            texts[kind].append(text)
            yield Delta(kind, text)

    t0 = time.perf_counter()
    done = 0
    for p in sorted({p for p in mark_at if 0 < p < len(new_ids)} if after_prefill is not None else ()):
        state.append(new_ids[done:p])
        after_prefill()
        done = p
    logits = state.append(new_ids[done:])
    if after_prefill is not None:
        after_prefill()
    t_prefill = time.perf_counter()
    decode_steps = 0
    for i in range(req.max_new_tokens):
        if req.cancel.is_set():
            finish = "cancelled"
            break
        # a grammar shapes the answer, not the reasoning before it (vLLM's structured output after a reasoning
        # parser does the same): while the model reasons, it samples freely
        constrained = req.constraint is not None and not (thinking and thinking.in_reasoning)
        allowed = req.constraint.mask() if constrained else None
        tok = sampler(logits if allowed is None else apply_mask(logits, allowed), state.tokens, generated)
        if i == 0:
            m.ttft_s = time.perf_counter() - t0
        if tok in stop_ids:
            finish = "stop"
            break
        if constrained:
            req.constraint.advance(tok)
        generated.append(tok)
        kind = thinking.route(tok) if thinking else "content"
        if kind is not None:
            yield from emit(kind, decoders[kind].push(tok))
        if stops.hit is not None:
            finish, hit = "stop", stops.hit
            break
        if req.constraint is not None and req.constraint.done():
            finish = "stop"
            break
        feed = [tok]
        if thinking and thinking.in_reasoning and req.thinking_budget is not None \
                and thinking.reasoning_tokens >= req.thinking_budget:
            forced = engine.budget_close_ids
            for f in forced:
                k = thinking.route(f)
                if k is not None:
                    yield from emit(k, decoders[k].push(f))
            generated.extend(forced)
            feed += forced
        if i + 1 < req.max_new_tokens:
            logits = state.append(feed)
            decode_steps += 1
    for kind in ("reasoning", "content"):
        tail = decoders[kind].flush()
        if tail:
            yield from emit(kind, tail)
    rest = stops.flush()
    if rest:
        texts["content"].append(rest)
        yield Delta("content", rest)
    t_end = time.perf_counter()
    m.generated_tokens = len(generated)
    m.prefill_s = t_prefill - t0
    m.prefill_tokens_per_s = len(new_ids) / m.prefill_s if m.prefill_s > 0 else 0.0
    m.decode_s = t_end - t_prefill
    m.decode_tokens_per_s = decode_steps / m.decode_s if decode_steps and m.decode_s > 0 else 0.0
    m.total_s = t_end - t0
    m.peak_rss_mb = peak_rss_mb()
    # Like Qwen's own parsing, the reasoning loses the newlines that precede </think>.
    yield Result("".join(texts["content"]), "".join(texts["reasoning"]).rstrip("\n"), generated, finish, m, hit,
                 req.sampling)
