"""OpenAI request bodies -> a checked ``Job``. Every wrong field is a 400 naming the field and what it
must be; fields we do not support (n > 1, logprobs, images) are refused, not ignored."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from edgeqwen.server.errors import ApiError, bad

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Job:
    endpoint: str  # "chat" or "completions"
    model: str
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    # None = the model's recommended value (recorded in the artifact from its generation_config.json),
    # as vLLM does; top_k, min_p and repetition_penalty are vLLM's extension fields
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | list[int] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # as sent: {"type": "function", "function": {...}}
    tool_choice: str = "auto"  # "none", "auto", "required" or a function name
    response_format: tuple[str, Any] | None = None  # ("json_object", None) or ("json_schema", schema)
    think: bool | None = None
    thinking_budget: int | None = None

    @property
    def functions(self) -> list[dict[str, Any]]:
        return [t["function"] for t in self.tools]


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def chat_job(body: dict[str, Any]) -> Job:
    job = _common(body, "chat")
    job.messages = _messages(body.get("messages"))
    job.max_tokens = _opt_int(body, "max_completion_tokens", 1)
    if job.max_tokens is None:
        job.max_tokens = _opt_int(body, "max_tokens", 1)
    job.tools = _tools(body.get("tools"))
    job.tool_choice = _tool_choice(body.get("tool_choice"), job)
    job.response_format = _response_format(body.get("response_format"))
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise bad("chat_template_kwargs must be an object", "chat_template_kwargs")
    think = kwargs.get("enable_thinking")
    if think is not None and not isinstance(think, bool):
        raise bad("chat_template_kwargs.enable_thinking must be true or false", "chat_template_kwargs")
    job.think = think
    job.thinking_budget = _opt_int(body, "thinking_budget", 0)
    return job


def completion_job(body: dict[str, Any]) -> Job:
    job = _common(body, "completions")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        job.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        job.prompt = list(prompt)
    else:
        raise bad("prompt must be a non-empty string or a list of token ids (one prompt per request)", "prompt")
    for name in ("echo", "logprobs", "suffix"):
        if body.get(name):
            raise bad(f"{name} is not supported by this server", name)
    job.max_tokens = _opt_int(body, "max_tokens", 1)
    if job.max_tokens is None:
        job.max_tokens = 16  # OpenAI's default for completions
    return job


def _common(body: dict[str, Any], endpoint: str) -> Job:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be the name of a served model (GET /v1/models lists them)", "model")
    job = Job(endpoint=endpoint, model=model)
    job.stream = _opt_bool(body, "stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    job.include_usage = bool(options.get("include_usage")) and job.stream
    job.temperature = _opt_number(body, "temperature", 0.0, 2.0)
    job.top_p = _opt_number(body, "top_p", 0.0, 1.0)
    if job.top_p == 0.0:
        job.top_p, job.temperature = 1.0, 0.0  # the single most likely token
    top_k = _opt_int(body, "top_k", -1)
    job.top_k = 0 if top_k == -1 else top_k  # vLLM: -1 (or 0) turns the cut off
    job.min_p = _opt_number(body, "min_p", 0.0, 1.0)
    rep = _opt_number(body, "repetition_penalty", 0.0, 10.0)
    if rep == 0.0:
        raise bad("repetition_penalty must be > 0 (1 = off)", "repetition_penalty")
    job.repetition_penalty = rep
    job.presence_penalty = _opt_number(body, "presence_penalty", -2.0, 2.0)
    if _opt_number(body, "frequency_penalty", -2.0, 2.0):
        raise bad("frequency_penalty is not supported by this server (presence_penalty and repetition_penalty are)",
                  "frequency_penalty")
    job.seed = _opt_int(body, "seed", None)
    job.stop = _stop(body.get("stop"))
    n = _opt_int(body, "n", 1)
    if n not in (None, 1):
        raise bad("n must be 1: this server returns one choice per request", "n")
    return job


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", "messages")
        msg = {k: v for k, v in m.items() if k in ("role", "content", "name", "tool_calls", "tool_call_id",
                                                     "reasoning_content")}
        msg["role"] = "system" if role == "developer" else role
        msg["content"] = _content(m.get("content"), where, allow_none=role == "assistant" and bool(m.get("tool_calls")))
        if "tool_calls" in msg and not isinstance(msg["tool_calls"], list):
            raise bad(f"{where}.tool_calls must be a list", "messages")
        out.append(msg)
    return out


def _content(raw: Any, where: str, allow_none: bool) -> str:
    if raw is None and allow_none:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        texts = []
        for part in raw:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content: only text parts are supported ({{\"type\": \"text\", \"text\": ...}})",
                          "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{where}.content must be a string or a list of text parts", "messages")


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad("tools must be a list of {type: function, function: {...}} objects", "tools")
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                      f"\"parameters\": {{...}}}}}}", "tools")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise bad(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
    return raw


def _tool_choice(raw: Any, job: Job) -> str:
    if raw is None:
        return "auto" if job.tools else "none"
    if raw in ("none", "auto", "required"):
        choice = raw
    elif isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict) \
            and isinstance(raw["function"].get("name"), str):
        choice = raw["function"]["name"]
        if choice not in {f["name"] for f in job.functions}:
            raise bad(f"tool_choice names {choice!r}, which is not in tools", "tool_choice")
    else:
        raise bad('tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
                  "tool_choice")
    if choice != "none" and not job.tools:
        raise bad("tool_choice needs tools", "tool_choice")
    return choice


def _response_format(raw: Any) -> tuple[str, Any] | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ("json_object", None)
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise bad("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return ("json_schema", spec["schema"])
    raise bad('response_format.type must be "text", "json_object" or "json_schema"', "response_format")


def _stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of up to 4 of them", "stop")
    return stops


def _opt_bool(body: dict[str, Any], name: str) -> bool | None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise bad(f"{name} must be true or false", name)
    return v


def _opt_int(body: dict[str, Any], name: str, low: int | None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(f"{name} must be an integer", name)
    if low is not None and v < low:
        raise bad(f"{name} must be >= {low}, got {v}", name)
    if abs(v) > 2**63 - 1:
        raise bad(f"{name} is out of range", name)
    return v


def _opt_number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not low <= v <= high:
        raise bad(f"{name} must be a number from {low:g} to {high:g}", name)
    return float(v)


def too_long(message: str) -> ApiError:
    return ApiError(400, message, "messages", "context_length_exceeded")
