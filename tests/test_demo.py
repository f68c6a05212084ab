"""`edgeqwen demo`: the trained default model, built, validated and completing Python; a second run
reuses the verified artifact and --force rebuilds it. The committed weights match their recipe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeqwen.testmodels.trained import DEFAULT_DIR, TrainSpec

pytestmark = pytest.mark.slow


def demo(workdir, *extra):
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "demo", "--workdir", str(workdir), *extra],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r


def test_committed_default_model_is_the_trainers_output():
    info = json.loads((DEFAULT_DIR / "edgeqwen_trained.json").read_text())
    assert info["spec"] == {**TrainSpec().__dict__}, "the committed model was trained with another recipe"
    config = json.loads((DEFAULT_DIR / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["dtype"] == "bfloat16"


def test_demo_builds_validates_and_writes_python(tmp_path):
    first = demo(tmp_path)
    out = first.stdout
    assert "verdict: PASS" in out and "Qwen3ForCausalLM" in out
    completion = out.split("== a Python completion", 1)[1]
    # Python-shaped text: indented lines, and Python's own keywords and punctuation
    body = completion.split("\n", 1)[1]
    assert sum(line.startswith("    ") for line in body.splitlines()) >= 3
    assert any(k in body for k in ("return", "if ", "self.", "import ", "def ")) and "(" in body and ":" in body
    assert "edgeqwen build" in first.stderr

    again = demo(tmp_path)
    assert "reusing the verified demo artifact" in again.stderr and "edgeqwen build" not in again.stderr
    text = lambda out: out.split("== a Python completion", 1)[1].split("\n[96 tokens")[0]  # noqa: E731
    assert text(again.stdout) == text(first.stdout)  # greedy: the same text (timings differ)

    forced = demo(tmp_path, "--force")
    assert "edgeqwen build" in forced.stderr and "reusing" not in forced.stderr

    # an artifact an older edgeqwen wrote (runtime contract 2) is rebuilt, not reused and then refused
    manifest_path = next(tmp_path.rglob("edgeqwen.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["runtime"]["version"] = 2
    manifest_path.write_text(json.dumps(manifest))
    older = demo(tmp_path)
    assert older.returncode == 0 and "edgeqwen build" in older.stderr and "reusing" not in older.stderr, older.stderr
