"""Qwen's tool calls in generated text: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
blocks (Hermes style, what Qwen2.5 and Qwen3 templates teach), turned into OpenAI ``tool_calls``."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": "function",
                             "function": {"name": self.name, "arguments": self.arguments}}
        return d if index is None else {"index": index, **d}


def parse_block(body: str) -> ToolCall | None:
    """The JSON inside one block, or None where it is not a call (then the text stays content)."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(obj["name"], text, f"call_{uuid.uuid4().hex[:24]}")


class ToolCallSplitter:
    """Streaming split of content into plain text and tool calls. Text that may be the start of
    ``<tool_call>`` is held back until it is known not to be."""

    def __init__(self) -> None:
        self._buf = ""
        self._inside = False
        self._after_call = False  # whitespace right after a call is layout, not content
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buf += text
        out, calls = [], []
        while True:
            if self._inside:
                end = self._buf.find(CLOSE)
                if end < 0:
                    break
                body, self._buf, self._inside = self._buf[:end], self._buf[end + len(CLOSE):], False
                call = parse_block(body.strip())
                if call is None:
                    out.append(OPEN + body + CLOSE)
                else:
                    calls.append(call)
                    self._after_call = True
                continue
            if self._after_call:
                self._buf = self._buf.lstrip()
                self._after_call = not self._buf
            start = self._buf.find(OPEN)
            if start >= 0:
                out.append(self._buf[:start])
                self._buf, self._inside = self._buf[start + len(OPEN):], True
                continue
            keep = _partial_suffix(self._buf, OPEN)
            out.append(self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        self.calls += calls
        return "".join(out), calls

    def flush(self) -> str:
        """What is left at the end: an unfinished block stays text."""
        rest = (OPEN if self._inside else "") + self._buf
        self._buf, self._inside = "", False
        return rest


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
