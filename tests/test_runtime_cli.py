"""``edgeqwen run`` and ``edgeqwen chat`` from a real terminal."""

import json
import subprocess
import sys

import pytest

from terminal import Terminal, needs_tmux


def test_run_json(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "6",
                        "--temperature", "0", "--json", "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threads"] == 1 and out["metrics"]["generated_tokens"] == 6 and out["finish_reason"] == "length"


def test_run_streams_text_and_reports_context_overflow(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--chat", "--no-think",
                        "--max-new-tokens", "5", "--temperature", "0"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() and "5 tokens, length" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "5000"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "exceeds the context length 2048" in r.stderr and "Traceback" not in r.stderr


@needs_tmux
@pytest.mark.parametrize("name, target", [("tiny-qwen2.5", "cpu-int4"),
                                          pytest.param("tiny-qwen3.5", "cpu-fp32", marks=pytest.mark.slow)])
def test_chat_two_turns_in_a_real_terminal(artifacts, name, target):
    """Qwen3.5 too: its hybrid state restores the turn-boundary snapshot for the second turn."""
    folder = artifacts(name, target).folder
    term = Terminal(f"{sys.executable} -m edgeqwen.cli chat {folder} --max-new-tokens 8 --temperature 0 -v")
    try:
        term.wait_for("you>", 1)
        term.send("What is your name?", "Enter")
        term.wait_for("you>", 2)
        term.send("And where do you live?", "Enter")
        s = term.wait_for("you>", 3)
        assert s.count("assistant> ") == 2
        assert "What is your name?" in s and "And where do you live?" in s
        assert s.count("8 tokens, length") == 2
        term.send("/exit", "Enter")
        assert term.wait_exit(), "chat did not exit on /exit"
    finally:
        term.close()
