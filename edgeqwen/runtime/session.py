"""Multi-turn chat that keeps the KV cache between turns.

Each turn renders the whole conversation with the template, keeps the longest cached prefix that
matches the new prompt's tokens and feeds only the rest. Where the template rewrites history
(Qwen3 drops earlier reasoning), the cache is rewound to where the texts part, so a turn always
computes exactly what a fresh run over the whole conversation computes. A state that cannot be
cut back (fixed-size recurrent layers, ``State.truncatable`` False) keeps a light snapshot where each
turn's prompt ends and where its assistant header starts (``State.snapshot``; the template may re-render
the answer, but not what precedes it): a history that parts from the cached one restores the last
snapshot before the difference and feeds the rest (an edited or dropped answer costs that answer, not
the conversation); without snapshots it starts over and prefills the whole prompt.
"""

from __future__ import annotations

from typing import Any

from edgeqwen.runtime.backends import Snapshot
from edgeqwen.runtime.generate import Result, Stream, run
from edgeqwen.runtime.prefix_cache import common_prefix

MAX_MARKS = 8  # turn-boundary snapshots kept (a recurrent layer's state each, not the KV cache)


class ChatSession:
    def __init__(self, engine, system: str | None = None, think: bool | None = None) -> None:
        self.engine = engine
        self.think = think
        self.system = system
        self.messages: list[dict[str, Any]] = []
        self.state = None
        self.marks: list[Snapshot] = []  # light snapshots at turn boundaries (states that cannot be cut back)
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
        self.marks = []

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
            keep = self._back_to(keep, capacity)
        self.reused_tokens = keep
        state = self.state
        mark = None if state.truncatable or not state.snapshots else lambda: self._mark(state.snapshot(kv=False))
        events = run(engine, state, ids[keep:], req, engine._thinking(ids), engine._stop_ids(req, chat=True),
                     cached=keep, after_prefill=mark, mark_at=engine.turn_marks(ids, keep))
        return _TurnStream(events, req, self, messages)

    def _back_to(self, keep: int, capacity: int) -> int:
        """Bring the state back to at most ``keep`` tokens; -> how many it holds."""
        if self.state.truncatable:
            self.state.rewind(keep)
            return keep
        usable = [m for m in self.marks if len(m.tokens) <= keep]
        if usable:
            mark = max(usable, key=lambda m: len(m.tokens))
            self.state.restore(mark)
            self.marks = [m for m in usable if len(m.tokens) <= len(mark.tokens)]
            return len(mark.tokens)
        self.close()  # nothing to go back to: start over
        self.state = self.engine.backend.new_state(capacity)
        return 0

    def _mark(self, snap: Snapshot) -> None:
        self.marks = (self.marks + [snap])[-MAX_MARKS:]


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
