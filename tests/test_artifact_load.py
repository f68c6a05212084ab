"""A built artifact on disk: tampering, interruption, the CLI views, and validation that can fail."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edgeqwen.errors import ArtifactError
from edgeqwen.runtime import load


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edgeqwen.cli", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.fixture()
def int4_copy(artifacts, tmp_path):
    src = artifacts("tiny-qwen2.5", "cpu-int4").folder
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("victim", ["model.onnx.data", "model.onnx", "tokenizer.json", "genai_config.json"])
def test_one_changed_byte_is_refused_at_load(int4_copy, victim):
    path = int4_copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"file {victim} does not match its sha256"):
        load(int4_copy)
    r = cli("inspect", int4_copy, "--verify")
    assert r.returncode == 2 and victim in r.stderr


def test_removed_manifest_means_not_an_artifact(int4_copy):
    (int4_copy / "edgeqwen.json").unlink()
    with pytest.raises(ArtifactError, match="edgeqwen.json is missing"):
        load(int4_copy)


def test_loaded_artifact_generates_and_threads_follow_affinity(artifacts):
    engine = load(artifacts("tiny-qwen2.5", "cpu-int4").folder)
    assert engine.threads == len(os.sched_getaffinity(0))
    assert len(engine.backend.greedy(engine.encode("Hello world!"), 8)) == 8
    assert load(artifacts("tiny-qwen2.5", "cpu-int4").folder, threads=1).threads == 1


@pytest.mark.slow
def test_interrupted_build_leaves_nothing_that_looks_whole(checkpoints, tmp_path):
    ckpt = checkpoints("tiny-qwen3")
    out = tmp_path / "art"
    proc = subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", "build", str(ckpt), "-t", "cpu-int4", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait until the exporter is writing weights into the staging folder, then kill the build hard
    deadline = time.time() + 120
    partial = []
    while time.time() < deadline:
        partial = list(tmp_path.glob(".art.edgeqwen-partial-*/artifact/model.onnx.data"))
        if partial:
            break
        time.sleep(0.02)
    assert partial, "build never reached the export step"
    time.sleep(0.2)  # mid-build: validation alone takes seconds
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = list(tmp_path.glob(".art.edgeqwen-partial-*"))
    assert leftovers and not (leftovers[0] / "edgeqwen.json").exists()
    with pytest.raises(ArtifactError, match="interrupted build leaves no manifest"):
        load(leftovers[0])
    # the next build of the same output sweeps the dead build's folder and publishes a whole artifact
    r = cli("build", ckpt, "-t", "cpu-fp32", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".art.edgeqwen-partial-*"))
    assert load(out).manifest["validation"]["passed"]


def test_existing_output_is_not_overwritten_without_force(artifacts, checkpoints):
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    r = cli("build", checkpoints("tiny-qwen2.5"), "-o", folder)
    assert r.returncode == 2 and "already exists" in r.stderr


@pytest.mark.slow
def test_validate_cli_passes_on_its_reference_and_fails_on_another(artifacts, checkpoints):
    folder = artifacts("tiny-qwen2.5", "cpu-fp32").folder
    r = cli("validate", folder, "--reference", checkpoints("tiny-qwen2.5"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["summary"]["top1_agreement"] == 1.0
    # another Qwen2.5 checkpoint with the same vocabulary but other weights: validation must catch it
    r = cli("validate", folder, "--reference", checkpoints("tiny-qwen2.5-coder"), "--json")
    assert r.returncode == 3
    result = json.loads(r.stdout)
    assert not result["passed"] and result["summary"]["top1_agreement"] < 0.5


def test_inspect_and_targets_cli(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-int4").folder
    r = cli("inspect", folder)
    assert r.returncode == 0
    for text in ("cpu-int4", "MatMulNBits: 4-bit, block 64, accuracy_level 4", "verdict: PASS", "Qwen3ForCausalLM"):
        assert text in r.stdout
    r = cli("targets")
    lines = r.stdout.strip().splitlines()
    assert len(lines) >= 3 and any(line.startswith("cpu-int4") and "(default)" in line for line in lines)
