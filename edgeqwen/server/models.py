"""One served artifact: its engine, its admission control (a decode slot per sequence, a bounded queue)
and the translation of a Job into prompt ids and generation options."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from edgeqwen.runtime.engine import Engine
from edgeqwen.server.config import ServerConfig
from edgeqwen.server.errors import ApiError, bad
from edgeqwen.server.grammar import Constraint, Grammars
from edgeqwen.server.params import Job, too_long


def pick_backend(folder: Path, choice: str) -> str | None:
    """"auto": the batched backend for genai artifacts built for the CPU (sequences share graph runs),
    the artifact's own backend otherwise (static graphs run one sequence at a time; DirectML keeps genai)."""
    if choice != "auto":
        return None if choice == "artifact" else choice
    from edgeqwen.artifact import read_manifest

    runtime = read_manifest(folder).get("runtime", {})
    return "batched" if runtime.get("backend") == "genai" and runtime.get("execution_provider") == "cpu" else None


class ServedModel:
    def __init__(self, name: str, folder: Path, config: ServerConfig) -> None:
        self.name, self.folder, self.config = name, folder, config
        backend = pick_backend(folder, config.backend)
        self.engine = Engine(folder, threads=config.threads or None, backend=backend)
        self.engine.encode("warm-up")  # load the tokenizer and the template now, not inside a request
        _ = self.engine.template
        self.backend_name = backend or self.engine.runtime.backend
        # OpenAI clients resend the whole history: keep finished sequences so the next turn prefills only the new
        self.prefixes = self.engine.keep_prefixes(config.prefix_cache_mb * 2**20)
        self.created = int(time.time())
        ends = sorted(self.engine.eos_ids | ({self.engine.im_end} if self.engine.im_end is not None else set()))
        self.grammars = Grammars(folder / self.engine.runtime.tokenizer, self.engine.runtime.vocab_size, ends)
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix=f"serve-{name}")
        self.active = 0
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def slot(self, wait_s: float) -> AsyncIterator[None]:
        """A decode slot, waiting in the bounded queue (at most ``wait_s``) if all are busy; 503 +
        Retry-After when the queue is full or the wait runs out."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_concurrency)
        if self._slots.locked() and self.waiting >= self.config.max_queue:
            raise ApiError(503, f"model {self.name} is busy: {self.active} requests decoding and {self.waiting} "
                           f"queued (the limit); retry shortly", code="server_busy", retry_after=1)
        self.waiting += 1
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), timeout=max(0.0, wait_s))
            else:
                await self._slots.acquire()  # free now: no wait to time out
        except asyncio.TimeoutError:
            raise ApiError(503, f"model {self.name} had no free slot within the request timeout",
                           code="server_busy", retry_after=5) from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()

    def prepare(self, job: Job) -> tuple[str, list[int], dict[str, Any]]:
        """Prompt text, prompt ids and generation options of a request (ApiError where out of bounds)."""
        text, ids = self.prompt(job)
        return text, ids, self.options(job, len(ids))

    # -- Job -> prompt ---------------------------------------------------------------------------------
    def prompt(self, job: Job) -> tuple[str, list[int]]:
        """The prompt text (for the request log's hash) and its token ids, within the limits."""
        engine = self.engine
        if job.endpoint == "chat":
            try:
                text = engine.render(job.messages, self.think(job), job.tools if job.tool_choice != "none" else None)
            except Exception as e:  # the checkpoint's own template refused the conversation
                raise bad(f"the chat template cannot render these messages: {e}", "messages") from None
            ids = engine.encode(text)
        elif isinstance(job.prompt, str):
            text, ids = job.prompt, engine.encode(job.prompt)
        else:
            ids = list(job.prompt or [])
            if any(not 0 <= t < engine.runtime.vocab_size for t in ids):
                raise bad(f"prompt token ids must be in [0, {engine.runtime.vocab_size})", "prompt")
            text = engine.decode(ids)
        limit = min(self.config.max_prompt_tokens or engine.context_length, engine.context_length - 1)
        if len(ids) > limit:
            raise too_long(f"the prompt is {len(ids)} tokens; this server takes at most {limit} "
                           f"(context length {engine.context_length})")
        return text, ids

    def think(self, job: Job) -> bool | None:
        if not self.engine.thinking:
            return None
        if self.grammar_wanted(job):
            return False  # a grammar shapes the answer from its first token: no free-text reasoning first
        return job.think

    def grammar_wanted(self, job: Job) -> bool:
        return job.response_format is not None or job.tool_choice not in ("none", "auto")

    # -- Job -> generation options ---------------------------------------------------------------------
    def options(self, job: Job, prompt_len: int) -> dict[str, Any]:
        engine = self.engine
        budget = job.thinking_budget if engine.thinking else None
        # a thinking budget may force Qwen's closing sentence into the answer: it must fit as well
        extra = len(engine.budget_close_ids) if budget is not None else 0
        cap, room = self.config.max_tokens, engine.context_length - prompt_len - extra
        if job.max_tokens is not None and job.max_tokens > cap:
            raise bad(f"max_tokens {job.max_tokens} exceeds this server's limit {cap}", "max_tokens")
        if job.max_tokens is not None and job.max_tokens > room:
            raise too_long(f"prompt ({prompt_len} tokens) + max_tokens ({job.max_tokens})"
                           f"{f' + the thinking budget close ({extra})' if extra else ''} exceeds the context "
                           f"length {engine.context_length}")
        if room < 1:
            raise too_long(f"the prompt ({prompt_len} tokens) leaves no room to answer in the context length "
                           f"{engine.context_length}")
        return dict(max_new_tokens=job.max_tokens if job.max_tokens is not None else min(cap, room),
                    temperature=job.temperature, top_p=job.top_p, top_k=job.top_k, min_p=job.min_p,
                    repetition_penalty=job.repetition_penalty, presence_penalty=job.presence_penalty,
                    seed=job.seed, stop=job.stop, think=self.think(job) if job.endpoint == "chat" else None,
                    thinking_budget=budget, constraint=self.constraint(job))

    def constraint(self, job: Job) -> Constraint | None:
        try:
            if job.response_format is not None:
                kind, schema = job.response_format
                compiled = self.grammars.json_object() if kind == "json_object" else self.grammars.json_schema(schema)
            elif job.tool_choice not in ("none", "auto"):
                fns = job.functions if job.tool_choice == "required" else \
                    [f for f in job.functions if f["name"] == job.tool_choice]
                compiled = self.grammars.tool_call(fns, self.engine.runtime.tool_call_format)
            else:
                return None
        except ValueError as e:
            raise bad(str(e), "response_format" if job.response_format else "tools") from None
        return Constraint(compiled)

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "edgeqwen",
                "root": str(self.folder)}
