"""Structured output: token masks from a grammar, applied while sampling (llguidance).

llguidance reads the artifact's tokenizer.json itself (no transformers). Its tokenizer costs ~175 MB
and ~1.7 s, so it is built on the first constrained request of a model and kept.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Compact JSON: llguidance's default allows unbounded whitespace, which a weak model can emit forever.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MAX_ERROR = 300  # llguidance's errors can list every special token


@dataclass(frozen=True)
class Compiled:
    tokenizer: Any  # llguidance.LLTokenizer
    matcher: Any  # a fresh llguidance.LLMatcher; each Constraint starts from a copy


class Grammars:
    """One model's grammar compiler (the llguidance tokenizer is made once, on first use)."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, end_ids: list[int]) -> None:
        self._args = (str(tokenizer_json), vocab_size, end_ids)
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                import llguidance

                path, vocab, ends = self._args
                # n_vocab pads to the logits' width; ids past the tokenizer's are never allowed.
                self._tokenizer = llguidance.LLTokenizer(path, n_vocab=vocab, eos_token=list(ends))
            return self._tokenizer

    def json_schema(self, schema: Any) -> Compiled:
        import llguidance

        if not isinstance(schema, dict):
            raise ValueError(f"the JSON schema must be an object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid JSON schema: {e}") from None
        return self._compile(grammar, "JSON schema")

    def json_object(self) -> Compiled:
        return self.json_schema({"type": "object"})

    def tool_call(self, tools: list[dict[str, Any]], body: str = "json") -> Compiled:
        """Qwen's tool-call turn for one of ``tools`` (OpenAI function definitions), arguments following that
        function's parameters, in the template's ``body`` format (edgeqwen.server.tools): "json",
        <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>, or "xml",
        <tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>."""
        import llguidance

        if body == "xml":
            return self._compile(llguidance.LLMatcher.grammar_from_lark(self._xml_call(tools)),
                                 "tool parameters schema")
        bodies = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                                      "arguments": t.get("parameters") or {"type": "object"}},
                   "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
        schema = {"anyOf": bodies, "x-guidance": JSON_OPTIONS} if len(bodies) > 1 else {**bodies[0], "x-guidance": JSON_OPTIONS}
        lark = (f'start: {self._literal("<tool_call>")} "\\n" body "\\n" {self._literal("</tool_call>")}\n'
                f"body: %json {json.dumps(schema)}\n")
        return self._compile(llguidance.LLMatcher.grammar_from_lark(lark), "tool parameters schema")

    def _xml_call(self, tools: list[dict[str, Any]]) -> str:
        """The lark grammar of an XML call: the function's required parameters in the schema's order, then any
        of its optional ones; a string value is raw text up to the closing tag, any other type JSON of its
        schema (what the parser types it back into)."""
        choices = " | ".join(f"f{i}" for i in range(len(tools)))
        rules = [f'start: {self._literal("<tool_call>")} "\\n" ({choices}) "</function>\\n" '
                 f'{self._literal("</tool_call>")}']
        for i, fn in enumerate(tools):
            params = fn.get("parameters") or {}
            props = params.get("properties") or {}
            required = [k for k in params.get("required") or [] if k in props]
            keys = [*required, *(k for k in props if k not in required)]
            opening = json.dumps("<function=" + fn["name"] + ">\n")
            rules.append(f"f{i}: {opening} " + " ".join(f"p{i}_{j}" + ("" if k in required else "?")
                                                       for j, k in enumerate(keys)))
            for j, key in enumerate(keys):
                rules.append(f'p{i}_{j}: {json.dumps("<parameter=" + key + ">" + chr(10))} v{i}_{j}')
                rules.append(_xml_value(f"v{i}_{j}", props[key]))
        return "\n".join(rules) + "\n"

    def _literal(self, text: str) -> str:
        """The lark form of ``text``: the special token where the vocabulary has one (Qwen's <tool_call>
        is one token), else the plain string."""
        ids = self.tokenizer.tokenize_str(text, parse_special=True)
        return text if len(ids) == 1 and self.tokenizer.is_special_token(ids[0]) else json.dumps(text)

    def _compile(self, grammar: str, what: str) -> Compiled:
        import llguidance

        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(f"invalid {what}: {error.strip()[:_MAX_ERROR]}")
        matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise ValueError(f"invalid {what}: {matcher.get_error()[:_MAX_ERROR]}")
        return Compiled(self.tokenizer, matcher)


CLOSE_PARAMETER = "\n</parameter>\n"


def _xml_value(rule: str, schema: Any) -> str:
    """Lark rule ``rule``: one XML parameter's value and closing tag. A string is raw text (its enum's values
    where it has one; its min/maxLength honoured), with the closing tag in the same lexeme, so text holding
    newlines ends at the first tag; any other type is the JSON of its schema (what the parser types it into)."""
    close = json.dumps(CLOSE_PARAMETER)
    if isinstance(schema, dict) and schema.get("type") not in (None, "string"):
        return f"{rule}: %json {json.dumps({**schema, 'x-guidance': JSON_OPTIONS})} {close}"
    schema = schema if isinstance(schema, dict) else {}
    enum = schema.get("enum")
    if enum and all(isinstance(e, str) and e and "<" not in e for e in enum):
        return f"{rule}: (" + " | ".join(json.dumps(e) for e in enum) + f") {close}"
    low, high = max(1, int(schema.get("minLength", 1))), schema.get("maxLength")
    count = f"{{{low},{int(high)}}}" if isinstance(high, int) and high >= low else f"{{{low},}}"
    return f"{rule}: {rule.upper()}\n{rule.upper()}: /[^<]{count}\\n<\\/parameter>\\n/"


class Constraint:
    """One request's grammar state (follows ``edgeqwen.runtime.sampling.Constraint``)."""

    def __init__(self, compiled: Compiled) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = compiled.matcher.deep_copy()
        self.vocab_size = compiled.tokenizer.vocab_size
        self._bits = allocate_token_bitmask(1, self.vocab_size)  # int32 [1, ceil(V / 32)]

    def mask(self) -> np.ndarray | None:
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bits)
        if self.matcher.is_error():
            raise RuntimeError(f"grammar: {self.matcher.get_error()[:_MAX_ERROR]}")
        allowed = np.unpackbits(self._bits.view(np.uint8), count=self.vocab_size, bitorder="little").view(bool)
        return None if allowed.all() else allowed

    def advance(self, token_id: int) -> None:
        # validate first: consume_token on a refused token would leave the matcher unusable
        if self.matcher.validate_tokens([token_id]) != 1 or not self.matcher.consume_token(token_id):
            raise ValueError(f"token {token_id} is not allowed by the grammar here")

    def done(self) -> bool:
        return self.matcher.is_stopped()
