"""What the server tells its operator: Prometheus metrics and a JSON-lines request log that holds a
hash of each prompt, not the prompt (unless asked)."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests = Counter("edgeqwen_requests", "Requests answered", ["model", "endpoint", "code"], registry=r)
        self.errors = Counter("edgeqwen_errors", "Error responses by status code", ["code"], registry=r)
        self.prompt_tokens = Counter("edgeqwen_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.cached_tokens = Counter("edgeqwen_cached_prompt_tokens", "Prompt tokens served from the prefix cache",
                                     ["model"], registry=r)
        self.prefix_hits = Counter("edgeqwen_prefix_cache_hits", "Requests that reused a kept sequence", ["model"],
                                   registry=r)
        self.prefix_bytes = Gauge("edgeqwen_prefix_cache_bytes", "Bytes of kept sequence state", ["model"], registry=r)
        self.completion_tokens = Counter("edgeqwen_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("edgeqwen_time_to_first_token_seconds", "Time to first token", ["model"], registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.decode_rate = Histogram("edgeqwen_decode_tokens_per_second", "Decode speed of one request", ["model"],
                                     registry=r, buckets=(1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500))
        self.queue_depth = Gauge("edgeqwen_queue_depth", "Requests waiting for a decode slot", ["model"], registry=r)
        self.active = Gauge("edgeqwen_active_requests", "Requests decoding", ["model"], registry=r)
        self.batch_rows = Gauge("edgeqwen_batch_rows_per_step", "Mean sequences per batched graph run", ["model"],
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestLog:
    """One JSON object per line per request. ``path`` "" = off, "-" = stderr."""

    def __init__(self, path: str, log_prompts: bool) -> None:
        self.log_prompts = log_prompts
        self._out: TextIO | None = None
        if path == "-":
            self._out = sys.stderr
        elif path:
            self._out = open(path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, prompt: str | None = None, **fields: Any) -> None:
        if self._out is None:
            return
        record: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        if prompt is not None:
            record["prompt_sha256"] = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
            if self.log_prompts:
                record["prompt"] = prompt
        with self._lock:
            self._out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._out is not None and self._out is not sys.stderr:
            self._out.close()
