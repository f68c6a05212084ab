"""Server settings: defaults, then a TOML file's ``[server]`` table, then command-line flags."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeqwen.errors import EdgeQwenError


@dataclass
class ServerConfig:
    models: list[str] = field(default_factory=list)  # artifact folders, or NAME=FOLDER
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_sha256: list[str] = field(default_factory=list)  # keys are stored hashed, never in clear
    requests_per_minute: int = 0  # per key (or per client address without keys); 0 = no limit
    tokens_per_minute: int = 0  # prompt + completion tokens per key per minute; 0 = no limit
    max_prompt_tokens: int = 0  # 0 = the model's context length
    max_tokens: int = 2048  # the largest max_tokens a request may ask for (and the default)
    request_timeout_s: float = 300.0
    max_concurrency: int = 4  # sequences decoding at once, per model (one batch)
    max_queue: int = 16  # requests waiting for a slot, per model; past it: 503 + Retry-After
    max_body_bytes: int = 1 << 20
    request_log: str = ""  # JSON-lines file ("-" = stderr); "" = none
    log_prompts: bool = False  # write prompt text into the log (otherwise only its sha256)
    shutdown_grace_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    threads: int = 0  # intra-op threads; 0 = the cores this process may use
    backend: str = "auto"  # "auto": batched for genai CPU artifacts, else the artifact's own
    prefix_cache_mb: int = 512  # state copies of finished sequences kept per model for prompts resending them; 0 = off
    allow_unauthenticated: bool = False  # bind a non-loopback address without API keys

    @classmethod
    def load(cls, file: str | None, overrides: dict[str, Any]) -> "ServerConfig":
        values: dict[str, Any] = {}
        if file:
            values.update(_read_toml(Path(file)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EdgeQwenError(f"server config: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if not self.models:
            raise EdgeQwenError("serve needs at least one artifact folder")
        if self.prefix_cache_mb < 0:
            raise EdgeQwenError("server config: prefix_cache_mb must be >= 0 (0 turns the prefix cache off)")
        for name in ("max_tokens", "max_concurrency", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise EdgeQwenError(f"server config: {name} must be >= 1")
        for h in self.api_key_sha256:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise EdgeQwenError("server config: api_key_sha256 entries are 64 lower-case hex digits "
                                    "(make one with `edgeqwen serve --hash-key KEY`)")
        if not self.api_key_sha256 and not self.allow_unauthenticated and not is_loopback(self.host):
            raise EdgeQwenError(f"serving on {self.host} (beyond this machine) needs API keys "
                                f"(--api-key-file or api_key_sha256 in the config), or --allow-unauthenticated")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.strip().encode()).hexdigest()


def read_key_file(path: str) -> list[str]:
    """Plain keys, one per line: hashed as they are read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EdgeQwenError(f"cannot read the API key file {path}: {e.strerror}") from None
    return [hash_key(k) for k in lines if k.strip() and not k.startswith("#")]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgeQwenError(f"cannot read the server config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgeQwenError(f"server config {path} is not valid TOML: {e}") from None
    table = data.get("server", data)
    if not isinstance(table, dict):
        raise EdgeQwenError(f"server config {path}: [server] must be a table")
    return table
