"""A program in a real terminal: tmux runs it, send-keys types, capture-pane reads the screen."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (.ci/run installs it)")


class Terminal:
    def __init__(self, command: str) -> None:
        self.name = f"edgeqwen-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", command], check=True)

    def screen(self) -> str:
        """The screen and its scrollback; capture-pane drops trailing spaces, so a prompt reads "you>"."""
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-2000", "-t", self.name], capture_output=True,
                              text=True).stdout

    def wait_for(self, text: str, count: int, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.screen()
            if s.count(text) >= count:
                return s
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {count} x {text!r}:\n{self.screen()}")

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def wait_exit(self, timeout: float = 20) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.alive():
            time.sleep(0.1)
        return not self.alive()

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
