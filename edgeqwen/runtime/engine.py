"""Load an artifact (manifest and hashes checked), pick its backend from the manifest, and generate:
plain completions, chat with the checkpoint's template, multi-turn sessions, batches, asyncio."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Sequence

from edgeqwen import allocator
from edgeqwen.artifact import RuntimeSpec, SamplingDefaults, load_verified, runtime_spec
from edgeqwen.errors import ContextOverflow
from edgeqwen.runtime import backends
from edgeqwen.runtime.backends import Backend
from edgeqwen.runtime.chat import BUDGET_CLOSE, ChatTemplate, ThinkingState
from edgeqwen.runtime.generate import Delta, Request, Result, Stream, run
from edgeqwen.runtime.prefix_cache import PrefixCache, Taken
from edgeqwen.runtime.sampling import Constraint, SamplingParams
from edgeqwen.runtime.threads import resolve_threads

if TYPE_CHECKING:
    from edgeqwen.runtime.session import ChatSession


class Engine:
    def __init__(self, folder: str | Path, threads: int | str | None = None, verify: str = "full",
                 provider: str | None = None, backend: str | None = None) -> None:
        """``provider``: None runs on the provider the artifact was built for (CPU, with a warning, where
        this onnxruntime build lacks it); "cpu" forces the CPU provider. ``backend``: None uses the
        manifest's; "batched" steps concurrent sequences of a genai artifact together (the server)."""
        self.folder = Path(folder)
        if verify not in ("full", "size"):
            raise ValueError("verify must be 'full' (sha256) or 'size'")
        self.manifest: dict[str, Any] = load_verified(self.folder, full=verify == "full")
        self.runtime: RuntimeSpec = runtime_spec(self.manifest, f"artifact {self.folder}")
        self.threads = resolve_threads(threads if threads is not None else self.runtime.threads)
        self.backend: Backend = backends.create(self.folder, self.runtime, self.threads, provider, backend)
        self.provider: str = self.backend.provider
        self.context_length = self.runtime.context_length
        specials = self.runtime.special_tokens
        self.eos_ids = set(self.runtime.eos_token_ids)
        self.im_end = specials.get("im_end")
        self.thinking = self.runtime.thinking
        self._think = (specials.get("think_start"), specials.get("think_end")) if self.thinking else None
        self._tokenizer = None
        self._template: ChatTemplate | None = None
        self._budget_close: list[int] | None = None
        self.prefix_cache: PrefixCache | None = None  # keep_prefixes() turns it on (the server does)

    def keep_prefixes(self, max_bytes: int) -> PrefixCache | None:
        """Park finished sequences (up to ``max_bytes`` of state copies) so a prompt that resends one prefills
        only what is new (edgeqwen.runtime.prefix_cache). Only backends whose states copy out take part."""
        probe = self.backend.new_state(1)
        try:
            ok = probe.snapshots
        finally:
            probe.close()
        self.prefix_cache = PrefixCache(max_bytes) if ok and max_bytes > 0 else None
        return self.prefix_cache

    # -- text <-> ids ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.folder / self.runtime.tokenizer))
        return self._tokenizer

    def release_tokenizer(self) -> None:
        """Drop the tokenizer until it is next needed (it is loaded again then): at Qwen3.5's 248,320-token
        vocabulary it holds ~290 MB, which a caller that has its ids already need not keep. Its many small
        blocks stay resident in the allocator's free lists until trimmed (measured: 360 MB after the drop,
        none after the trim), so the memory goes back to the system here."""
        self._tokenizer = None
        allocator.release()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def budget_close_ids(self) -> list[int]:
        """Qwen's early-stop sentence and </think>, tokenised once."""
        if self._budget_close is None:
            self._budget_close = self.encode(BUDGET_CLOSE)
        return self._budget_close

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate((self.folder / self.runtime.chat_template).read_text(encoding="utf-8"))
        return self._template

    def render(self, messages: Sequence[dict[str, Any]], think: bool | None = None,
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The prompt text for ``messages``; ``think`` sets Qwen3's enable_thinking (None: template
        default); ``tools`` are OpenAI-style tool definitions, rendered by the template."""
        return self.template.render(messages, add_generation_prompt=True, enable_thinking=think, tools=tools)

    # -- generation ---------------------------------------------------------------------------------
    def sampling_defaults(self, chat: bool = False, think: bool | None = None) -> SamplingDefaults:
        """The model's recommended decoding for a plain completion, or a chat turn with ``think``
        (None: the template's default mode; False picks the non-thinking setting where the model has one)."""
        if chat and think is False and self.runtime.sampling_non_thinking is not None:
            return self.runtime.sampling_non_thinking
        return self.runtime.sampling

    def sampling_params(self, chat: bool = False, think: bool | None = None, **overrides: Any) -> SamplingParams:
        """The model's defaults with each keyword that is not None in its place (``temperature=0`` is
        greedy; the other defaults, the repetition penalty among them, stay)."""
        d = self.sampling_defaults(chat, think)
        base = dict(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k, min_p=d.min_p,
                    repetition_penalty=d.repetition_penalty, presence_penalty=d.presence_penalty)
        unknown = sorted(set(overrides) - set(base) - {"seed"})
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(unknown)}")
        return SamplingParams(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def _request(self, max_new_tokens: int = 256, sampling: SamplingParams | None = None, stop: Sequence[str] = (),
                 stop_tokens: Sequence[int] = (), thinking_budget: int | None = None,
                 cancel: threading.Event | None = None, constraint: Constraint | None = None,
                 chat: bool = False, think: bool | None = None, **sampling_kwargs: Any) -> Request:
        if sampling is not None and sampling_kwargs:
            raise TypeError("give either sampling=SamplingParams(...) or sampling keywords, not both")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        sampling = sampling or self.sampling_params(chat, think, **sampling_kwargs)
        return Request(max_new_tokens=max_new_tokens, sampling=sampling,
                       stop=tuple(stop), stop_tokens=tuple(stop_tokens), thinking_budget=thinking_budget,
                       cancel=cancel or threading.Event(), constraint=constraint)

    def _check_context(self, total_prompt: int, req: Request) -> None:
        extra = len(self.budget_close_ids) if req.thinking_budget is not None else 0
        need = total_prompt + req.max_new_tokens + extra
        if need > self.context_length:
            raise ContextOverflow(
                f"prompt ({total_prompt} tokens) + max_new_tokens ({req.max_new_tokens}) = {need} tokens "
                f"exceeds the context length {self.context_length}; shorten the prompt or lower max_new_tokens"
            )

    def _thinking(self, prompt_ids: Sequence[int]) -> ThinkingState | None:
        if self._think is None:
            return None
        start, end = self._think
        state = ThinkingState(start, end, self.runtime.special_tokens.get("tool_call"))
        # Templates that open <think> in the prompt (Qwen3-2507 thinking models) start in reasoning.
        last_start = max((i for i, t in enumerate(prompt_ids) if t == start), default=-1)
        last_end = max((i for i, t in enumerate(prompt_ids) if t == end), default=-1)
        last_turn = max((i for i, t in enumerate(prompt_ids) if t == self.runtime.special_tokens.get("im_start")), default=-1)
        if last_start > max(last_end, last_turn):
            state.in_reasoning = True
        return state

    def turn_marks(self, ids: Sequence[int], keep: int) -> tuple[int, ...]:
        """Where a chat prompt's fed part (``ids[keep:]``) should also leave a snapshot of a state that cannot
        be cut back: before the last <|im_start|>, the assistant turn's header. The history up to there is
        what the next turn's prompt repeats, even where the template re-renders this turn's answer (Qwen3 and
        Qwen3.5 drop its think block), so the next turn restores it and feeds the answer and the new message."""
        start = self.runtime.special_tokens.get("im_start")
        last = max((i for i, t in enumerate(ids) if t == start), default=-1)
        return (last - keep,) if last > keep else ()

    def _stop_ids(self, req: Request, chat: bool) -> set[int]:
        ids = set(self.eos_ids) | set(req.stop_tokens)
        if chat and self.im_end is not None:
            ids.add(self.im_end)
        return ids

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Stream:
        """Plain completion of ``prompt`` (no chat template), as a stream of text deltas."""
        return self._stream(prompt, chat=False, **options)

    def generate(self, prompt: str | Sequence[int], **options: Any) -> Result:
        return self.stream(prompt, **options).finish()

    def chat(self, messages: Sequence[dict[str, Any]], think: bool | None = None,
             tools: Sequence[dict[str, Any]] | None = None, **options: Any) -> Stream:
        """One assistant turn for ``messages`` with the checkpoint's chat template."""
        return self._stream(self.render(messages, think, tools), chat=True, think=think, **options)

    def open_stream(self, ids: Sequence[int], chat: bool, think: bool | None = None, **options: Any) -> Stream:
        """A stream over prompt token ids already rendered (``chat``: the turn also ends at <|im_end|>;
        ``think``: the mode the prompt was rendered in, for the sampling defaults).
        The sequence's KV memory is released when the stream ends, is cancelled or is dropped."""
        return self._stream(list(ids), chat, think=think, **options)

    def _stream(self, prompt: str | Sequence[int], chat: bool, think: bool | None = None, **options: Any) -> Stream:
        req = self._request(chat=chat, think=think, **options)
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("empty prompt")
        self._check_context(len(ids), req)
        capacity = len(ids) + req.max_new_tokens + 64
        cache = self.prefix_cache
        taken = cache.take(self.backend, ids, capacity) if cache else Taken(self.backend.new_state(capacity), 0, [])
        state, marks = taken.state, list(taken.marks)
        # a state that cannot be cut back keeps a light snapshot where this prompt ends (a turn boundary)
        mark = (lambda: marks.append(state.snapshot(kv=False))) if cache and not state.truncatable else None
        events = run(self, state, ids[taken.keep:], req, self._thinking(ids), self._stop_ids(req, chat),
                     cached=taken.keep, after_prefill=mark, mark_at=self.turn_marks(ids, taken.keep) if chat else ())
        park = (lambda: cache.park(state, marks)) if cache else None
        return Stream(_closing(events, state, park), req)

    def session(self, system: str | None = None, think: bool | None = None) -> "ChatSession":
        from edgeqwen.runtime.session import ChatSession

        return ChatSession(self, system=system, think=think)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], concurrency: int = 1,
                       **options: Any) -> list[Result]:
        """Several completions on this one loaded model. ``concurrency`` > 1 runs requests in threads
        (each with its own KV cache); with the manifest's backend on a 2-core machine 1 is as fast,
        since each request already uses every core; with ``backend="batched"`` the threads' sequences
        share graph runs."""
        if concurrency <= 1:
            return [self.generate(p, **options) for p in prompts]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(lambda p: self.generate(p, **options), prompts))

    async def astream(self, prompt: str | Sequence[int], chat_messages: Sequence[dict[str, Any]] | None = None,
                      think: bool | None = None, **options: Any) -> AsyncIterator[Delta | Result]:
        """asyncio view of a stream: deltas as they come, then the Result. The model runs in a worker
        thread so the event loop stays free."""
        def start() -> Stream:
            return self.chat(chat_messages, think, **options) if chat_messages is not None else self.stream(prompt, **options)

        async for item in aiterate(start):
            yield item

    async def agenerate(self, prompt: str | Sequence[int], **options: Any) -> Result:
        result = None
        async for item in self.astream(prompt, **options):
            if isinstance(item, Result):
                result = item
        assert result is not None
        return result


async def aiterate(start: Callable[[], Stream], executor: Executor | None = None) -> AsyncIterator[Delta | Result]:
    """Run ``start()`` and its stream in a worker thread (``executor``, or asyncio's default); yield its
    deltas, then its Result, on the event loop. Leaving early (a cancelled task) cancels the stream."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    holder: list[Stream] = []
    stop = threading.Event()

    def work() -> None:
        try:
            stream = start()
            holder.append(stream)
            if stop.is_set():
                stream.cancel()
            for d in stream:
                loop.call_soon_threadsafe(queue.put_nowait, d)
            loop.call_soon_threadsafe(queue.put_nowait, stream.result)
        except BaseException as e:  # surfaced in the awaiting task
            loop.call_soon_threadsafe(queue.put_nowait, e)
        loop.call_soon_threadsafe(queue.put_nowait, done)

    worker = loop.run_in_executor(executor, work)
    finished = False
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        finished = True
    finally:
        if not finished:  # the consumer left early: stop the generation (a finished one stays as it is)
            stop.set()
            if holder:
                holder[0].cancel()
        try:
            await asyncio.shield(worker)
        except BaseException:
            pass  # the worker's own error was raised above, or the caller is being cancelled


def _closing(events: Iterator[Delta | Result], state, park: Callable[[], None] | None = None
             ) -> Iterator[Delta | Result]:
    """The events, then the state released: parked for a later prompt (``park``) when the stream ran to its
    end, closed when it failed or was dropped half-way."""
    finished = False
    try:
        yield from events
        finished = True
    finally:
        if finished and park is not None:
            park()
        else:
            state.close()


def load(folder: str | Path, **kwargs: Any) -> Engine:
    return Engine(folder, **kwargs)
