"""Who may call, and how much: API keys (compared by sha256) and per-key rate limits over a sliding
minute, on requests and on tokens (prompt + completion)."""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import defaultdict, deque

from edgeqwen.server.config import ServerConfig, hash_key
from edgeqwen.server.errors import ApiError

WINDOW_S = 60.0


class Gate:
    def __init__(self, config: ServerConfig) -> None:
        self.hashes = list(config.api_key_sha256)
        self.rpm, self.tpm = config.requests_per_minute, config.tokens_per_minute
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def identify(self, authorization: str | None, client: str) -> str:
        """The caller's identity for limits and logs: the key's hash prefix, or the client address
        where no keys are configured. Raises 401 for a missing or unknown key."""
        if not self.hashes:
            return f"addr:{client}"
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
        digest = hash_key(key)
        if not any(hmac.compare_digest(digest, h) for h in self.hashes):
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return f"key:{digest[:12]}"

    def admit(self, who: str) -> None:
        """Count one request against ``who``; 429 with Retry-After past either limit."""
        now = time.monotonic()
        with self._lock:
            reqs, toks = self._requests[who], self._tokens[who]
            _expire(reqs, now, lambda r: r)
            _expire(toks, now, lambda t: t[0])
            if self.rpm and len(reqs) >= self.rpm:
                raise self._limited("requests", self.rpm, reqs[0], now)
            if self.tpm and sum(n for _, n in toks) >= self.tpm:
                raise self._limited("tokens", self.tpm, toks[0][0], now)
            reqs.append(now)

    def spend(self, who: str, tokens: int) -> None:
        with self._lock:
            self._tokens[who].append((time.monotonic(), tokens))

    @staticmethod
    def _limited(what: str, limit: int, oldest: float, now: float) -> ApiError:
        wait = max(1, math.ceil(oldest + WINDOW_S - now))
        return ApiError(429, f"rate limit reached: {limit} {what} per minute; retry in {wait} s",
                        code="rate_limit_exceeded", retry_after=wait)


def _expire(q: deque, now: float, stamp) -> None:
    while q and stamp(q[0]) <= now - WINDOW_S:
        q.popleft()
