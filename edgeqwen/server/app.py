"""The HTTP side: routes, OpenAI response shapes (whole and as server-sent events), limits, logs, metrics.

Starlette + uvicorn: the maintained ASGI pair underneath FastAPI, without FastAPI's request models,
whose 422 errors are not OpenAI-shaped; bodies are checked by edgeqwen.server.params instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgeqwen.errors import ContextOverflow, EdgeQwenError
from edgeqwen.runtime.engine import aiterate
from edgeqwen.runtime.generate import Delta, Result
from edgeqwen.server.config import ServerConfig
from edgeqwen.server.errors import ApiError
from edgeqwen.server.limits import Gate
from edgeqwen.server.models import ServedModel
from edgeqwen.server.params import Job, chat_job, completion_job, parse_body, too_long
from edgeqwen.server.telemetry import CONTENT_TYPE, Metrics, RequestLog
from edgeqwen.server.tools import ToolCallSplitter


@dataclass
class Outcome:
    """What one generation produced, assembled from its stream."""

    text: list[str] = field(default_factory=list)
    tool_calls: list = field(default_factory=list)
    result: Result | None = None
    first_token_s: float | None = None  # from the request's arrival (queue wait and prompt included)

    def finish_reason(self) -> str:
        if self.tool_calls:
            return "tool_calls"
        return "length" if self.result is None or self.result.finish_reason == "length" else "stop"


class Server:
    def __init__(self, config: ServerConfig, models: dict[str, ServedModel]) -> None:
        self.config, self.models = config, models
        self.gate = Gate(config)
        self.metrics = Metrics()
        self.log = RequestLog(config.request_log, config.log_prompts)
        self.draining = False

    # -- plumbing ------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ], exception_handlers={ApiError: self._error_response, 404: self._not_found, 405: self._not_allowed,
                               Exception: self._internal_error})

    async def _error_response(self, request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers())

    async def _internal_error(self, request: Request, e: Exception) -> JSONResponse:
        return await self._error_response(request, _internal(e))

    async def _not_found(self, request: Request, e: Exception) -> JSONResponse:
        return await self._error_response(request, ApiError(404, f"no route {request.url.path}", code="not_found"))

    async def _not_allowed(self, request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(ApiError(405, f"{request.method} is not allowed on {request.url.path}").body(),
                            status_code=405)

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {declared} bytes; the limit is {limit}", code="body_too_large")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the request body exceeds the limit of {limit} bytes", code="body_too_large")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client went away while sending the body") from None
        return parse_body(b"".join(chunks))

    def _model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, f"model {name!r} is not served here; served: {', '.join(self.models)}",
                           "model", "model_not_found")
        return model

    # -- simple routes -------------------------------------------------------------------------------
    async def list_models(self, request: Request) -> JSONResponse:
        self.gate.identify(request.headers.get("authorization"), _client(request))
        return JSONResponse({"object": "list", "data": [m.describe() for m in self.models.values()]})

    async def health(self, request: Request) -> JSONResponse:
        body = {"status": "draining" if self.draining else "ok",
                "models": [{"id": m.name, "loaded": True, "verified": True, "backend": m.backend_name,
                            "active": m.active, "queued": m.waiting} for m in self.models.values()]}
        return JSONResponse(body, status_code=503 if self.draining else 200)

    async def prometheus(self, request: Request) -> Response:
        for m in self.models.values():
            self.metrics.queue_depth.labels(m.name).set(m.waiting)
            self.metrics.active.labels(m.name).set(m.active)
            backend = m.engine.backend
            if getattr(backend, "steps", 0):
                self.metrics.batch_rows.labels(m.name).set(backend.rows_stepped / backend.steps)
            if m.prefixes is not None:
                self.metrics.prefix_bytes.labels(m.name).set(m.prefixes.nbytes)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # -- generation routes -------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions")

    async def _generate(self, request: Request, endpoint: str) -> Response:
        t0 = time.perf_counter()
        record: dict[str, Any] = {"id": f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                                  "endpoint": endpoint, "client": _client(request)}
        try:
            if self.draining:
                raise ApiError(503, "the server is shutting down", code="shutting_down", retry_after=5)
            who = record["caller"] = self.gate.identify(request.headers.get("authorization"), _client(request))
            self.gate.admit(who)
            body = await self._body(request)
            job = chat_job(body) if endpoint == "chat" else completion_job(body)
            model = self._model(job.model)
            record["model"] = model.name
            # tokenising a long prompt or compiling a grammar (the first one loads llguidance's tokenizer,
            # ~2 s) must not hold up the event loop and the streams it serves
            text, ids, options = await asyncio.get_running_loop().run_in_executor(None, model.prepare, job)
            record["prompt_tokens"] = len(ids)
            record["_prompt"] = text
        except ApiError as e:
            self._finish(record, e.status, t0)
            raise
        run = Run(self, model, job, ids, options, record, who, t0)
        if job.stream:
            return StreamingResponse(run.sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await run.whole(request)

    def _finish(self, record: dict[str, Any], status: int, t0: float, outcome: Outcome | None = None) -> None:
        model = record.get("model", "")
        self.metrics.requests.labels(model, record["endpoint"], str(status)).inc()
        if status >= 400:
            self.metrics.errors.labels(str(status)).inc()
        if outcome is not None and outcome.result is not None:
            m = outcome.result.metrics
            self.metrics.prompt_tokens.labels(model).inc(m.prompt_tokens)
            if m.cached_tokens:
                self.metrics.prefix_hits.labels(model).inc()
                self.metrics.cached_tokens.labels(model).inc(m.cached_tokens)
            self.metrics.completion_tokens.labels(model).inc(m.generated_tokens)
            ttft = outcome.first_token_s if outcome.first_token_s is not None else m.ttft_s
            self.metrics.ttft.labels(model).observe(ttft)
            if m.decode_tokens_per_s:
                self.metrics.decode_rate.labels(model).observe(m.decode_tokens_per_s)
            record.update(completion_tokens=m.generated_tokens, cached_tokens=m.cached_tokens, ttft_s=round(ttft, 4),
                          finish_reason=outcome.finish_reason())
            if outcome.result.sampling is not None:  # the model's defaults with the request's fields over them
                record["sampling"] = asdict(outcome.result.sampling)
        prompt = record.pop("_prompt", None)
        self.log.write(prompt, status=status, duration_s=round(time.perf_counter() - t0, 4), **record)


class Run:
    """One admitted request: waits for a slot, generates, and answers whole or as events."""

    def __init__(self, server: Server, model: ServedModel, job: Job, ids: list[int], options: dict[str, Any],
                 record: dict[str, Any], who: str, t0: float) -> None:
        self.server, self.model, self.job, self.ids, self.options = server, model, job, ids, options
        self.record, self.who, self.t0 = record, who, t0
        self.cancel = threading.Event()
        self.outcome = Outcome()
        self.stream = None  # the runtime's Stream, once a slot is granted
        self.created = int(time.time())
        self.splitter = ToolCallSplitter({f["name"]: f for f in job.functions}) \
            if job.endpoint == "chat" and job.tools and job.tool_choice != "none" else None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Chunks of the answer as plain dicts: {"content"}, {"reasoning_content"}, {"tool_calls"}."""
        engine, chat = self.model.engine, self.job.endpoint == "chat"
        deadline = self.t0 + self.server.config.request_timeout_s

        def start():
            self.stream = engine.open_stream(self.ids, chat, cancel=self.cancel, **self.options)
            return self.stream

        async with self.model.slot(deadline - time.perf_counter()):
            async for item in _runtime_errors(aiterate(start, self.model.executor)):
                if time.perf_counter() > deadline:
                    self.cancel.set()
                    raise ApiError(504, f"the request ran past the server's timeout of "
                                        f"{self.server.config.request_timeout_s:g} s", code="timeout")
                if isinstance(item, Result):  # the last item: the loop ends with the worker
                    self.outcome.result = item
                    continue
                if self.outcome.first_token_s is None:
                    self.outcome.first_token_s = time.perf_counter() - self.t0
                for piece in self._pieces(item):
                    yield piece
        if self.splitter is not None:
            rest = self.splitter.flush()
            if rest:
                self.outcome.text.append(rest)
                yield {"content": rest}

    def _pieces(self, d: Delta) -> list[dict[str, Any]]:
        if d.kind == "reasoning":  # whole answers take it from the Result (no layout newlines)
            return [{"reasoning_content": d.text}]
        if self.splitter is None:
            self.outcome.text.append(d.text)
            return [{"content": d.text}]
        text, calls = self.splitter.feed(d.text)
        out: list[dict[str, Any]] = []
        if text:
            self.outcome.text.append(text)
            out.append({"content": text})
        for call in calls:
            out.append({"tool_calls": [call.to_openai(len(self.outcome.tool_calls))]})
            self.outcome.tool_calls.append(call)
        return out

    def usage(self) -> dict[str, Any]:
        m = self.outcome.result.metrics if self.outcome.result else None
        done = m.generated_tokens if m else 0
        return {"prompt_tokens": len(self.ids), "completion_tokens": done, "total_tokens": len(self.ids) + done,
                "prompt_tokens_details": {"cached_tokens": m.cached_tokens if m else 0}}

    def _settle(self, status: int) -> None:
        if self.outcome.result is None and self.stream is not None:
            self.outcome.result = self.stream.result  # cancelled: what was generated before the cancel
        self.server.gate.spend(self.who, self.usage()["total_tokens"])
        self.server._finish(self.record, status, self.t0, self.outcome)

    # -- whole answers -------------------------------------------------------------------------------
    async def whole(self, request: Request) -> JSONResponse:
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, self.cancel, gone))
        status = 200
        try:
            async for _ in self.events():
                pass
            if gone.is_set():
                status = 499  # nginx's "client closed request": nobody reads this answer
                return JSONResponse({}, status_code=499)
            return JSONResponse(self._whole_body())
        except ApiError as e:
            status = e.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            watcher.cancel()
            self._settle(status)

    def _whole_body(self) -> dict[str, Any]:
        o, rid = self.outcome, self.record["id"]
        if self.job.endpoint == "completions":
            return {"id": rid, "object": "text_completion", "created": self.created, "model": self.model.name,
                    "choices": [{"index": 0, "text": "".join(o.text), "finish_reason": o.finish_reason(),
                                 "logprobs": None}], "usage": self.usage()}
        message: dict[str, Any] = {"role": "assistant", "content": "".join(o.text) or (None if o.tool_calls else "")}
        if o.result is not None and o.result.reasoning:
            message["reasoning_content"] = o.result.reasoning
        if o.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in o.tool_calls]
        return {"id": rid, "object": "chat.completion", "created": self.created, "model": self.model.name,
                "choices": [{"index": 0, "message": message, "finish_reason": o.finish_reason(), "logprobs": None}],
                "usage": self.usage()}

    # -- server-sent events --------------------------------------------------------------------------
    async def sse(self) -> AsyncIterator[bytes]:
        status = 200
        try:
            if self.job.endpoint == "chat":
                yield _event(self._chunk({"role": "assistant", "content": ""}))
            async for piece in self.events():
                yield _event(self._chunk(piece))
            yield _event(self._chunk({}, self.outcome.finish_reason()))
            if self.job.include_usage:
                yield _event({**self._chunk({}), "choices": [], "usage": self.usage()})
        except ApiError as e:  # headers are sent: the error travels as an event
            status = e.status
            yield _event(e.body())
        except Exception as e:  # a bug of ours: say so in the stream, keep serving
            status = 500
            yield _event(_internal(e).body())
        except BaseException:
            status = 499  # the client went away: cancel, free the sequence, log once the worker stops
            self.cancel.set()
            asyncio.get_running_loop().create_task(self._settle_when_stopped(status))
            raise
        self.cancel.set()
        self._settle(status)
        yield b"data: [DONE]\n\n"

    async def _settle_when_stopped(self, status: int) -> None:
        for _ in range(100):  # the worker notices the cancel within one decode step
            if self.stream is None or self.stream.result is not None:
                break
            await asyncio.sleep(0.05)
        self._settle(status)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        rid, created, name = self.record["id"], self.created, self.model.name
        if self.job.endpoint == "completions":
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": 0, "text": delta.get("content", ""), "finish_reason": finish,
                                 "logprobs": None}]}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


async def _runtime_errors(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The runtime's own errors as API errors: what the request asked for is out of bounds."""
    try:
        async for item in items:
            yield item
    except ContextOverflow as e:
        raise too_long(str(e)) from None
    except ValueError as e:  # sampling parameters the runtime refused, a grammar that failed
        raise ApiError(400, str(e)) from None


def _internal(e: Exception) -> ApiError:
    traceback.print_exception(e)  # to the server's stderr, for the operator
    return ApiError(500, f"internal error ({type(e).__name__}); the server log has the details", code="internal_error")


def _event(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode("utf-8")


async def _watch_disconnect(request: Request, cancel: threading.Event, gone: asyncio.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            gone.set()
            cancel.set()
            return
        await asyncio.sleep(0.1)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def load_models(config: ServerConfig, say=print) -> dict[str, ServedModel]:
    models: dict[str, ServedModel] = {}
    for entry in config.models:
        name, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        folder = Path(path)
        name = name or folder.name
        if name in models:
            raise EdgeQwenError(f"two artifacts are served as {name!r}; name them NAME=FOLDER")
        t = time.perf_counter()
        models[name] = ServedModel(name, folder, config)
        say(f"loaded {name} from {folder} ({models[name].backend_name} backend, verified) in "
            f"{time.perf_counter() - t:.1f} s")
    return models
