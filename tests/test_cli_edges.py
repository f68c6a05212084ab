"""Rough edges a new user hits: each bad input is one clear line (no traceback), each flag says
what it did or why it did nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from terminal import Terminal, needs_tmux


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edgeqwen.cli", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("flag, value, message", [
    ("--max-new-tokens", "-3", "--max-new-tokens: -3 is out of range: must be an integer >= 1"),
    ("--max-new-tokens", "many", "--max-new-tokens: 'many' is not an integer"),
    ("--temperature", "-1", "--temperature: -1 is out of range: must be a number >= 0"),
    ("--temperature", "nan", "--temperature: nan is out of range"),
    ("--top-p", "0", "--top-p: 0 is out of range: must be a number in (0, 1]"),
    ("--top-p", "1.5", "--top-p: 1.5 is out of range"),
    ("--top-k", "-1", "--top-k: -1 is out of range"),
    ("--repetition-penalty", "0", "--repetition-penalty: 0 is out of range: must be a number > 0"),
    ("--seed", "-5", "--seed: -5 is out of range"),
    ("--thinking-budget", "-2", "--thinking-budget: -2 is out of range"),
    ("--threads", "0", "--threads: 0 is out of range"),
])
def test_run_flags_are_range_checked_when_parsed(flag, value, message):
    # the artifact does not exist: the flag is refused before anything is loaded
    r = cli("run", "no-such-artifact", "Hi", flag, value)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--reps", "0"], "--reps: 0 is out of range"),
    (["--decode-tokens", "-1"], "--decode-tokens: -1 is out of range"),
    (["--prompt-lengths", "128,0"], "every value must be an integer >= 1"),
    (["--depths", "0,-512"], "every value must be an integer >= 0"),
    (["--quality-tokens", "x"], "'x' is not an integer"),
])
def test_bench_flags_are_range_checked_when_parsed(args, message):
    r = cli("bench", "no-such-artifact", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_validate_with_a_missing_reference_is_one_line(artifacts, tmp_path):
    folder = artifacts("tiny-qwen2.5", "cpu-fp32").folder
    r = cli("validate", folder, "--reference", tmp_path / "missing" / "path")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "missing/path" in r.stderr


@pytest.mark.slow
def test_validate_against_another_checkpoint_says_the_hashes_differ(artifacts, checkpoints):
    folder = artifacts("tiny-qwen2.5", "cpu-fp32").folder
    # same vocabulary, other weights: the hashes differ, and validation then fails on the numbers
    r = cli("validate", folder, "--reference", checkpoints("tiny-qwen2.5-coder"))
    assert r.returncode == 3
    assert "the reference's config.json sha256" in r.stderr and "differs from the manifest's" in r.stderr
    # another vocabulary (Qwen2.5-7B's 152,064): refused before scoring, in one line after the note
    r = cli("validate", folder, "--reference", checkpoints("tiny-qwen2"))
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "differs from the manifest's" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "edgeqwen: error: the reference's vocabulary has 152,064 tokens, the artifact's 151,936: "
        "pass the checkpoint the artifact was built from as --reference")
    r = cli("validate", folder, "--reference", checkpoints("tiny-qwen2.5"))
    assert r.returncode == 0 and "differs" not in r.stderr


def test_inspect_verify_says_the_files_matched(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    r = cli("inspect", folder, "--verify")
    assert r.returncode == 0
    n = len(json.loads((folder / "edgeqwen.json").read_text())["files"])
    assert f"verified: all {n} files" in r.stdout and "match the sizes and sha256" in r.stdout


def test_inspect_json_into_a_closed_pipe_is_not_an_error(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    # `true` exits before edgeqwen writes: every write meets a closed pipe
    r = subprocess.run(f"{sys.executable} -m edgeqwen.cli inspect --json {folder} | true; exit ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_think_on_a_model_without_thinking_says_it_is_ignored(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    r = cli("run", folder, "Hi", "--think", "--max-new-tokens", "3")
    assert r.returncode == 0
    assert "--think ignored: this artifact's model (qwen2) has no thinking mode" in r.stderr


@pytest.mark.slow
def test_cpu_fallback_warning_is_one_line_without_source(artifacts):
    folder = artifacts("tiny-qwen3", "directml-fp16").folder
    r = cli("run", folder, "Hi", "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert warning == ["edgeqwen: warning: this artifact was built for the 'dml' execution provider, which this "
                       "onnxruntime build lacks; running its graph on the CPU provider instead"]
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["streaming", "olive"])
def test_build_progress_is_for_people(checkpoints, tmp_path, exporter):
    r = cli("build", checkpoints("tiny-qwen3"), "-t", "cpu-int4-fast", "-o", tmp_path / "a", "--no-validate",
            "--exporter", exporter)
    assert r.returncode == 0, r.stderr
    progress = r.stderr
    if exporter == "streaming":  # layers, tensors and bytes done of total, elapsed, remaining
        assert re.search(r"layer 2/2: \d+/\d+ tensors, [\d.]+ GiB written, \d+ s elapsed, ~\d+ s left", progress)
    else:
        assert "ModelBuilder: layer 2/2 read" in progress and "s left" in progress
        assert "restore_io_names:" in progress and "share_tied_embeddings:" in progress
    assert "olive_cache" not in progress and "edgeqwen-partial" not in progress
    assert "{" not in progress and "}" not in progress  # no dict reprs


@needs_tmux
def test_chat_ctrl_c_at_once_stops_the_answer_not_the_chat(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-fp32").folder
    # a long answer, so Ctrl-C lands while it is being generated
    term = Terminal(f"{sys.executable} -m edgeqwen.cli chat {folder} --max-new-tokens 1900 --temperature 0 --threads 1")
    try:
        term.wait_for("you>", 1)
        for turn in (1, 2):
            term.send(f"Tell me a long story number {turn}", "Enter")
            term.wait_for("assistant>", turn, timeout=10)
            time.sleep(0.2)  # within the first half second of the answer
            term.send("C-c")
            term.wait_for("(stopped)", turn)
            s = term.wait_for("you>", turn + 1)
        assert "interrupted" not in s
        term.send("/exit", "Enter")
        assert term.wait_exit(), "chat did not exit on /exit after two stopped answers"
    finally:
        term.close()
