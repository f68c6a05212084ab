"""Multi-turn chat that keeps the KV cache between turns.

Each turn renders the whole conversation with the template, keeps the longest cached prefix that
matches the new prompt's tokens and feeds only the rest. Where the template rewrites history
(Qwen3 drops earlier reasoning), the cache is rewound to where the texts part, so a turn always
computes exactly what a fresh run over the whole conversation computes. A state that cannot be
rewound (fixed-size layers, ``State.truncatable`` False) is replaced by a fresh one and the whole
prompt prefilled: the same result, only slower.
"""

from __future__ import annotations

from typing import Any

from edgeqwen.runtime.generate import Result, Stream, run


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatSession:
    def __init__(self, engine, system: str | None = None, think: bool | None = None) -> None:
        self.engine = engine
        self.think = think
        self.system = system
        self.messages: list[dict[str, Any]] = []
        self.state = None
        self.reused_tokens = 0  # of the last turn: prompt tokens served from the cache
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.close()

    def close(self) -> None:
        """Give back the KV cache (on the batched backend a session otherwise keeps its row)."""
        if self.state is not None:
            self.state.close()
        self.state = None

    def send(self, text: str, **options: Any) -> Stream:
        engine = self.engine
        req = engine._request(chat=True, think=self.think, **options)
        messages = self.messages + [{"role": "user", "content": text}]
        ids = engine.encode(engine.render(messages, self.think))
        engine._check_context(len(ids), req)
        capacity = len(ids) + req.max_new_tokens + 256
        if self.state is None:
            self.state = engine.backend.new_state(capacity)
        keep = min(common_prefix(self.state.tokens, ids), len(ids) - 1)  # feed >= 1 token to get logits
        if keep < len(self.state.tokens):
            if self.state.truncatable:
                self.state.rewind(keep)
            else:  # the state holds tokens the new prompt does not: start over
                self.close()
                self.state, keep = engine.backend.new_state(capacity), 0
        self.reused_tokens = keep
        events = run(engine, self.state, ids[keep:], req, engine._thinking(ids), engine._stop_ids(req, chat=True))
        return _TurnStream(events, req, self, messages)


class _TurnStream(Stream):
    """A turn's stream that records the assistant reply in the session when it completes."""

    def __init__(self, events, request, session: ChatSession, messages: list[dict[str, Any]]) -> None:
        super().__init__(events, request)
        self._session, self._messages = session, messages

    def __iter__(self):
        yield from super().__iter__()
        r: Result | None = self.result
        if r is not None and r.finish_reason != "cancelled":
            reply: dict[str, Any] = {"role": "assistant", "content": r.text}
            if r.reasoning:
                reply["reasoning_content"] = r.reasoning
            self._session.messages = self._messages + [reply]
