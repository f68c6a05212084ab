"""Qwen's tool calls in generated text, turned into OpenAI ``tool_calls``. Two bodies inside ``<tool_call>``
blocks, told apart by their first characters (the artifact's ``runtime.tool_call_format`` says which one its
template teaches; the parser takes either):
  json  ``{"name": ..., "arguments": {...}}`` (Hermes style: Qwen2.5, Qwen3)
  xml   ``<function=NAME>`` then ``<parameter=KEY>\\nVALUE\\n</parameter>`` per argument, ``</function>``
        (Qwen3-Coder, Qwen3.5): values are raw text, typed by the function's parameter schema as vLLM's
        qwen3_coder parser types them (a key the schema does not know stays a string)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": "function",
                             "function": {"name": self.name, "arguments": self.arguments}}
        return d if index is None else {"index": index, **d}


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_block(body: str, functions: dict[str, dict[str, Any]] | None = None) -> ToolCall | None:
    """The call inside one block (JSON or XML body), or None where it is not a call (then the text stays
    content). ``functions``: the request's function definitions by name (types XML arguments)."""
    if body.startswith("<function="):
        return _parse_xml(body, functions or {})
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(obj["name"], text, _call_id())


def _parse_xml(body: str, functions: dict[str, dict[str, Any]]) -> ToolCall | None:
    m = _FUNCTION.fullmatch(body)
    if m is None:
        return None
    name = m.group(1).strip()
    props = ((functions.get(name) or {}).get("parameters") or {}).get("properties") or {}
    args = {}
    for key, raw in _PARAMETER.findall(m.group(2)):
        value = raw[1:] if raw.startswith("\n") else raw  # the template's layout newlines, not the value's
        value = value[:-1] if value.endswith("\n") else value
        args[key.strip()] = typed(value, props.get(key.strip()))
    return ToolCall(name, json.dumps(args, ensure_ascii=False), _call_id())


def typed(value: str, schema: Any) -> Any:
    """An XML parameter's text as its schema's type (the text itself where the schema gives no type, a
    string type, or a value that does not parse as the type)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is None or "string" in kinds:
        return value
    text = value.strip()
    if text == "null" and "null" in kinds:
        return None
    try:
        if "integer" in kinds:
            return int(text)
        if "number" in kinds:
            number = float(text)
            return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
        if "boolean" in kinds:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            return value
        return json.loads(text)  # object, array
    except ValueError:
        return value


class ToolCallSplitter:
    """Streaming split of content into plain text and tool calls. Text that may be the start of
    ``<tool_call>`` is held back until it is known not to be."""

    def __init__(self, functions: dict[str, dict[str, Any]] | None = None) -> None:
        self.functions = functions or {}
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
                call = parse_block(body.strip(), self.functions)
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
