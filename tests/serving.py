"""A real `edgeqwen serve` process on loopback for tests, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, models: list[str], *flags: str, log: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "edgeqwen.cli", "serve", *models, "--port", str(self.port), "--threads", "1",
                *flags]
        if log is not None:
            args += ["--request-log", str(log)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become healthy within 60 s")

    def client(self, key: str = "unused", **kw):
        import openai

        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read()), r.headers
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), e.headers

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class RawStream:
    """A streaming POST read line by line over http.client; closing it drops the connection (a client
    that goes away)."""

    def __init__(self, served: Served, path: str, body: dict) -> None:
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()

    def lines(self):
        for raw in self.resp:
            line = raw.decode().rstrip("\n")
            if line:
                yield line

    def close(self) -> None:
        self.conn.sock.close() if self.conn.sock else None
        self.conn.close()

    def __enter__(self) -> "RawStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def thinking_build(checkpoint: Path, root: Path) -> Path:
    """``checkpoint`` built to cpu-fp32 with a template that opens <think> in the prompt (as Qwen3-2507 thinking
    models do), so even random weights start in the reasoning part; -> the artifact folder."""
    import shutil

    from edgeqwen.compiler.pipeline import build

    ckpt = root / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    gen = "{{- '<|im_start|>assistant\\n' }}\n{%- if enable_thinking"
    assert gen in cfg["chat_template"]
    cfg["chat_template"] = cfg["chat_template"].replace(
        gen, "{{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- if enable_thinking")
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    return build(str(ckpt), "cpu-fp32", root / "art", quiet=True).folder
