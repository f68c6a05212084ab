"""``edgeqwen run`` and ``edgeqwen chat`` from a real terminal."""

import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest


def test_run_json(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "6",
                        "--json", "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threads"] == 1 and out["metrics"]["generated_tokens"] == 6 and out["finish_reason"] == "length"


def test_run_streams_text_and_reports_context_overflow(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--chat", "--no-think",
                        "--max-new-tokens", "5"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() and "5 tokens, length" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "5000"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "exceeds the context length 2048" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (.ci/run installs it)")
def test_chat_two_turns_in_a_real_terminal(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    name = f"edgeqwen-{uuid.uuid4().hex[:8]}"
    cmd = f"{sys.executable} -m edgeqwen.cli chat {folder} --max-new-tokens 8 -v"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50", cmd], check=True)

    def screen() -> str:  # capture-pane drops trailing spaces: the prompt reads "you>"
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

    def wait_for(text: str, count: int, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = screen()
            if s.count(text) >= count:
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {count} x {text!r}:\n{screen()}")

    try:
        wait_for("you>", 1)
        subprocess.run(["tmux", "send-keys", "-t", name, "What is your name?", "Enter"], check=True)
        wait_for("you>", 2)
        subprocess.run(["tmux", "send-keys", "-t", name, "And where do you live?", "Enter"], check=True)
        s = wait_for("you>", 3)
        assert s.count("assistant> ") == 2
        assert "What is your name?" in s and "And where do you live?" in s
        assert s.count("8 tokens, length") == 2
        subprocess.run(["tmux", "send-keys", "-t", name, "/exit", "Enter"], check=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", name], capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, "chat did not exit on /exit"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
