"""The small-model trainer is reproducible and writes a checkpoint the compiler accepts."""

import dataclasses
import json

import pytest
from safetensors.numpy import load_file

from edgeqwen.compiler.checkpoint import open_checkpoint
from edgeqwen.testmodels.trained import TrainSpec, train

pytestmark = pytest.mark.slow  # trains twice

TINY = dataclasses.replace(TrainSpec(), vocab=512, hidden=64, layers=1, heads=2, kv_heads=1, head_dim=32,
                           intermediate=128, seq_len=64, batch=4, steps=3, warmup=2, max_train_chars=200_000)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    logs = []
    info_a = train(root / "a", TINY, log=logs.append)
    info_b = train(root / "b", TINY, log=lambda s: None)
    return root, info_a, info_b, logs


def test_same_seed_same_model(two_runs):
    root, a, b, _ = two_runs
    wa, wb = load_file(str(root / "a" / "model.safetensors")), load_file(str(root / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert a["eval_perplexity_fp32"] == b["eval_perplexity_fp32"]
    assert (root / "a" / "tokenizer.json").read_bytes() == (root / "b" / "tokenizer.json").read_bytes()


def test_checkpoint_is_a_qwen3_the_compiler_accepts(two_runs):
    root, info, _, logs = two_runs
    ckpt = open_checkpoint(str(root / "a"))
    assert ckpt.architecture == "Qwen3ForCausalLM" and ckpt.tied_embeddings
    assert info["parameters"] == ckpt.parameter_count
    saved = json.loads((root / "a" / "edgeqwen_trained.json").read_text())
    assert saved["spec"]["seed"] == TINY.seed and len(saved["corpus_sha256"]) == 64
    assert any(line.startswith("step 3/3") for line in logs)
    assert (root / "a" / "eval.txt").stat().st_size > 0
