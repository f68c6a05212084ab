"""Bad checkpoints are refused before any heavy work, with a message that says what is wrong."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgeqwen.compiler.checkpoint import open_checkpoint
from edgeqwen.errors import CheckpointError

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16, "tie_word_embeddings": True}


def fake(tmp_path, config=CONFIG, tensors=None, name="model.safetensors"):
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text("{}")
    save_file(tensors or {"model.embed_tokens.weight": np.zeros((16, 8), np.float32)}, str(d / name))
    return d


def test_a_good_small_checkpoint_opens(tmp_path):
    c = open_checkpoint(str(fake(tmp_path)))
    assert c.family == "qwen2" and c.tied_embeddings and c.dtype == "float32" and c.parameter_count == 128


def test_non_qwen_architecture_lists_supported(tmp_path):
    d = fake(tmp_path, {**CONFIG, "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(str(d))
    assert "LlamaForCausalLM is not supported" in str(e.value)
    assert "Qwen2ForCausalLM" in str(e.value) and "Qwen3ForCausalLM" in str(e.value)


def test_length_dependent_rope_is_refused_up_front(tmp_path):
    d = fake(tmp_path, {**CONFIG, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    with pytest.raises(CheckpointError, match="rope type 'dynamic' is not supported"):
        open_checkpoint(str(d))


def test_missing_weights_file(tmp_path):
    d = fake(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights: no \\*.safetensors file"):
        open_checkpoint(str(d))


def test_missing_shard_named_in_index(tmp_path):
    d = fake(tmp_path, name="model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors named in .* missing"):
        open_checkpoint(str(d))


def test_truncated_weights_file(tmp_path):
    d = fake(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        open_checkpoint(str(d))
    f.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        open_checkpoint(str(d))


def test_pickle_only_and_quantised_weights_are_refused(tmp_path):
    d = fake(tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="only PyTorch pickle weights"):
        open_checkpoint(str(d))
    shutil.rmtree(d)
    d = fake(tmp_path, tensors={"w": np.zeros((4, 4), np.int8)})
    with pytest.raises(CheckpointError, match="dtype I8"):
        open_checkpoint(str(d))


def test_missing_folder_and_bad_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="not found: no such folder"):
        open_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="could not download nobody/no-such-model"):
        open_checkpoint("nobody/no-such-model")  # HF_HUB_OFFLINE=1 in conftest: fails without network


def test_cli_reports_bad_input_in_one_line(tmp_path):
    d = fake(tmp_path, {**CONFIG, "architectures": ["GPT2LMHeadModel"]})
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(d), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "edgeqwen: error: architecture GPT2LMHeadModel is not supported" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(d), "--target", "tpu-int2"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown target 'tpu-int2'; available: android-cpu-int4-fast, android-cpu-int4, " in r.stderr
    assert "cpu-int4, cpu-int8, directml-fp16" in r.stderr


def test_a_checkpoint_missing_a_tensor_its_spec_needs_is_refused_in_one_line(tmp_path):
    """It opens (inspect and validate read such folders), but a build stops before any export, naming the
    first tensor the tensor map expects and the file lacks."""
    d = fake(tmp_path)  # config of a 1-layer Qwen2, weights of the embedding only
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(d), "-t", "cpu-fp32", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeqwen: error:")]  # beside progress lines
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    # 1 layer x 12 tensors (norms, q/k/v + biases, o, gate/up/down) + the final norm, tied: 13 missing
    assert "tensor model.layers.0.input_layernorm.weight (and 12 more) is missing" in errors[0], r.stderr
    assert not (tmp_path / "out").exists()
