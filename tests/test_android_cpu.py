"""android-cpu-int4(-fast): ORT-format model and reduced operator config, validated by running the .ort here."""

import json
import subprocess
import sys

import pytest

from edgeqwen.runtime import load

pytestmark = pytest.mark.slow  # builds several artifacts


# each Android profile is its desktop twin's graph in ORT format
TWINS = [("android-cpu-int4", "cpu-int4"), ("android-cpu-int4-fast", "cpu-int4-fast")]


@pytest.mark.parametrize("target, twin", TWINS)
@pytest.mark.parametrize("name", ["tiny-qwen3"])  # tiny-qwen2.5 passed too; cut for the suite's time budget
def test_android_cpu_artifact(artifacts, name, target, twin):
    result = artifacts(name, target, loss_text=True)
    m, folder = result.manifest, result.folder
    assert m["validation"]["passed"], m["validation"]["failures"]
    files = set(m["files"])
    assert {"model.ort", "required_operators.config"} <= files
    assert "model.onnx" not in files and "model.onnx.data" not in files
    assert m["runtime"]["model_file"] == "model.ort" and m["runtime"]["model_format"] == "ort"
    assert json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "model.ort"
    ops = (folder / "required_operators.config").read_text()
    assert "com.microsoft;1;" in ops and "MatMulNBits" in ops and "GroupQueryAttention" in ops
    # the quantisation read back from the ONNX graph before conversion is what the .ort holds
    ops = m["quantization"]["weight_ops"]
    assert ops == artifacts(name, twin).manifest["quantization"]["weight_ops"]
    assert any(w["op"] == "MatMulNBits" and w["bits"] == 4 for w in ops)
    # the twin's graph (GPTQ is deterministic: same calibration text, same order), so the same numbers
    # (ORT-format conversion applies the same optimisations)
    loss = m["validation"]["quantization_loss"]["summary"]
    assert loss["kl_mean"] == pytest.approx(artifacts(name, twin, loss_text=True).manifest["validation"]["quantization_loss"]
                                            ["summary"]["kl_mean"], rel=1e-3)
    assert m["validation"]["summary"]["max_abs_logit_diff"] < 1e-3  # parity on the .ort's fp32-compute twin


@pytest.mark.parametrize("target", [t for t, _ in TWINS])
def test_run_streams_from_the_ort_artifact(artifacts, target):
    folder = artifacts("tiny-qwen3", target).folder
    engine = load(folder)
    assert len(engine.generate("Hello", max_new_tokens=6, temperature=0).token_ids) == 6
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "4",
                        "--temperature", "0", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metrics"]["generated_tokens"] == 4
