"""Chat templates (the checkpoint's own Jinja template) and Qwen3's thinking split and budget."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

# Qwen's documented way to end thinking early: this sentence, then </think>.
BUDGET_CLOSE = "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now.\n</think>\n\n"


class ChatTemplate:
    def __init__(self, source: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(source)
        self.source = source

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
               enable_thinking: bool | None = None, tools: Sequence[dict[str, Any]] | None = None) -> str:
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"message role must be system, user, assistant or tool, got {m.get('role')!r}")
        kwargs: dict[str, Any] = {}
        messages = [_arguments_as_mappings(m) for m in messages]
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        if tools:
            kwargs["tools"] = list(tools)
        return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **kwargs)


def _arguments_as_mappings(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message whose tool calls carry their arguments as OpenAI sends them (a JSON string), with
    each parsed into a mapping, as vLLM hands them to templates: Qwen3.5's writes one <parameter=key> block per
    argument; Qwen2.5 / Qwen3's serialise either form. Arguments that are not JSON stay as they were."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not calls:
        return message
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        args = fn.get("arguments") if isinstance(fn, dict) else None
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                call = {**call, "function": {**fn, "arguments": parsed}}
        out.append(call)
    return {**message, "tool_calls": out}


@dataclass
class ThinkingState:
    """Where generated tokens go: 'reasoning' until </think>, then 'content'."""

    think_start: int | None
    think_end: int | None
    tool_call: int | None = None  # <tool_call>: Qwen3.5 may open a call inside its reasoning, which ends it
    in_reasoning: bool = False
    reasoning_tokens: int = 0
    closed: bool = False

    def route(self, token_id: int) -> str | None:
        """Return 'reasoning' / 'content' for a token, or None for the <think>/</think> markers themselves."""
        if token_id == self.think_start and not self.closed:
            self.in_reasoning = True
            return None
        if token_id == self.think_end and self.in_reasoning:
            self.in_reasoning, self.closed = False, True
            return None
        if token_id == self.tool_call and self.in_reasoning:  # an implicit </think>, as vLLM's Qwen3 parser reads it
            self.in_reasoning, self.closed = False, True
            return "content"
        if self.in_reasoning:
            self.reasoning_tokens += 1
            return "reasoning"
        return "content"
