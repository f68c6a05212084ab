"""Load the artifacts, then run uvicorn until SIGINT/SIGTERM, draining in-flight requests first."""

from __future__ import annotations

import socket
from typing import Callable

from edgeqwen.errors import EdgeQwenError
from edgeqwen.server.app import Server, load_models
from edgeqwen.server.config import ServerConfig


def serve(config: ServerConfig, say: Callable[[str], None] = print) -> int:
    import uvicorn

    _check_address(config.host, config.port)  # before minutes of loading, not after
    server = Server(config, load_models(config, say))

    class Draining(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Stop taking generation requests at once (503 + Retry-After, /health 503); uvicorn then stops
            # accepting connections and gives open ones timeout_graceful_shutdown to finish.
            server.draining = True
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has stopped, so the process dies by it; a drained
            # shutdown is a clean exit (status 0) after our own last words instead.
            self._captured_signals.clear()

    uv = Draining(uvicorn.Config(server.app(), host=config.host, port=config.port, log_level="warning",
                                 timeout_graceful_shutdown=config.shutdown_grace_s, access_log=False))
    say(f"listening on http://{config.host}:{config.port}/v1 (models: {', '.join(server.models)})")
    uv.run()
    server.log.close()
    say("stopped")
    return 0


def _check_address(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise EdgeQwenError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
