"""``edgeqwen serve``: the OpenAI-compatible server from a terminal (the [serve] extra)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgeqwen.argtypes import positive_float, positive_int, nonneg_int


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server for one or more artifacts (needs [serve])")
    s.add_argument("models", nargs="*", metavar="ARTIFACT", help="artifact folder, or NAME=FOLDER; the request's "
                   "model field picks one (default name: the folder's name)")
    s.add_argument("--config", help="TOML file with a [server] table (same names as these flags, with _)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=positive_int, help="default 8000")
    s.add_argument("--api-key-file", help="file of API keys, one per line (kept only as sha256 hashes)")
    s.add_argument("--requests-per-minute", type=nonneg_int, help="per key (or client address); 0 = no limit")
    s.add_argument("--tokens-per-minute", type=nonneg_int, help="prompt + completion tokens per key; 0 = no limit")
    s.add_argument("--max-prompt-tokens", type=nonneg_int, help="0 = the model's context length")
    s.add_argument("--max-tokens", type=positive_int, help="largest max_tokens a request may ask for (default 2048)")
    s.add_argument("--request-timeout", dest="request_timeout_s", type=positive_float, help="seconds (default 300)")
    s.add_argument("--max-concurrency", type=positive_int, help="sequences decoding together per model (default 4)")
    s.add_argument("--max-queue", type=nonneg_int, help="requests waiting per model before 503 (default 16)")
    s.add_argument("--max-body-bytes", type=positive_int, help="default 1 MiB")
    s.add_argument("--request-log", help="JSON-lines request log file ('-' = stderr)")
    s.add_argument("--log-prompts", action="store_true", default=None, help="also log prompt text (default: sha256 only)")
    s.add_argument("--shutdown-grace", dest="shutdown_grace_s", type=positive_float,
                   help="seconds in-flight requests get after SIGTERM (default 30)")
    s.add_argument("--threads", type=positive_int, help="intra-op threads (default: usable cores)")
    s.add_argument("--backend", choices=("auto", "batched", "artifact"),
                   help="auto (default): batch concurrent sequences where the artifact allows")
    s.add_argument("--prefix-cache-mb", type=nonneg_int,
                   help="MB of finished sequences' state kept per model, so a request resending a conversation "
                        "prefills only what is new (default 512; 0 = off)")
    s.add_argument("--allow-unauthenticated", action="store_true", default=None,
                   help="listen beyond loopback without API keys")
    s.add_argument("--hash-key", metavar="KEY", help="print the sha256 to put in api_key_sha256, and exit")
    s.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from edgeqwen.extras import require

    if args.hash_key:
        from edgeqwen.server.config import hash_key

        print(hash_key(args.hash_key))
        return 0
    require("serve", "edgeqwen serve")
    from edgeqwen.server.config import ServerConfig, read_key_file
    from edgeqwen.server.run import serve

    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("models", "config", "api_key_file", "hash_key", "func", "command")}
    if args.models:
        overrides["models"] = args.models
    if args.api_key_file:
        overrides["api_key_sha256"] = read_key_file(args.api_key_file)
    config = ServerConfig.load(args.config, overrides)
    return serve(config, say=lambda s: print(f"edgeqwen serve: {s}", file=sys.stderr, flush=True))
