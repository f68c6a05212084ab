"""LoRA adapters merged at build: checked against peft's own merged model, refused when they do not fit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeqwen.compiler.adapter import merge, open_adapter
from edgeqwen.compiler.pipeline import build
from edgeqwen.errors import CheckpointError
from edgeqwen.runtime.engine import Engine
from edgeqwen.targets import load_profile

PROMPT = "def quicksort(items):\n    "


@pytest.fixture(scope="module")
def adapters(checkpoints, tmp_path_factory):
    """Two adapters trained here with peft: all seven linear layers of tiny-qwen2.5 (r 4, alpha 8), and
    q/v/down of tiny-qwen3 with rsLoRA (r 8, alpha 16)."""
    from edgeqwen.testmodels.lora import train_lora

    root = tmp_path_factory.mktemp("adapters")
    return {
        "tiny-qwen2.5": train_lora(checkpoints("tiny-qwen2.5"), root / "q25", steps=12),
        "tiny-qwen3": train_lora(checkpoints("tiny-qwen3"), root / "q3", steps=12, r=8, alpha=16, rslora=True,
                                 targets=("q_proj", "v_proj", "down_proj")),
    }


def peft_merged(base, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


@pytest.mark.slow  # trains LoRA adapters and builds with each; the merge itself is tested quickly below
@pytest.mark.parametrize("fixture", ["tiny-qwen2.5", "tiny-qwen3"])
def test_fp32_build_with_adapter_equals_peft_merged_model(checkpoints, adapters, artifacts, tmp_path, fixture):
    import torch

    base = checkpoints(fixture)
    r = build(str(base), "cpu-fp32", tmp_path / "art", adapter=adapters[fixture], quiet=True)
    assert r.manifest["validation"]["passed"]
    recorded = r.manifest["adapter"]
    assert recorded["sha256"] == open_adapter(adapters[fixture]).sha256 and recorded["user_scale"] == 1.0
    engine = Engine(r.folder)
    reference = peft_merged(base, adapters[fixture])
    ids = engine.encode(PROMPT)
    with torch.no_grad():
        want = reference.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,  # plain argmax, as
                                  repetition_penalty=1.0)[0, len(ids):].tolist()  # backend.greedy
        full = ids + want
        ref_logits = reference(torch.tensor([full])).logits[0, len(ids) - 1:].numpy()
    assert engine.backend.greedy(ids, 24) == want  # the same greedy continuation as peft's merged model
    got = engine.backend.teacher_forced_logits(full, len(ids))
    bound = load_profile("cpu-fp32").validation.max_abs_logit_diff  # the profile's own fp32 parity bound
    assert np.abs(got - ref_logits).max() <= bound
    assert (got.argmax(-1) == ref_logits.argmax(-1)).all()
    # and the adapter matters: the base model's artifact continues differently
    base_engine = Engine(artifacts(fixture, "cpu-fp32").folder)
    assert base_engine.backend.greedy(ids, 24) != want


@pytest.mark.slow
def test_int4_build_with_adapter_validates_and_records_it(checkpoints, adapters, tmp_path):
    r = build(str(checkpoints("tiny-qwen2.5")), "cpu-int4", tmp_path / "art", adapter=adapters["tiny-qwen2.5"],
              adapter_scale=0.5, quiet=True, loss_text=False)
    assert r.manifest["validation"]["passed"]
    assert r.manifest["adapter"]["merged_scale"] == pytest.approx(8 / 4 * 0.5)
    assert r.manifest["quantization"]  # read back from the graph: the int4 pass ran on the merged weights
    assert not (r.folder / "merged").exists()  # the merged checkpoint is an input, not part of the artifact


def test_merge_keeps_dtype_and_layout_and_computes_w_plus_sba(checkpoints, adapters, tmp_path):
    import torch
    from safetensors import safe_open

    base = checkpoints("tiny-qwen2.5", "bfloat16")
    adapter = open_adapter(adapters["tiny-qwen2.5"], 1.5)
    files = [p.name for p in base.glob("*.safetensors")]
    out = merge(base, files, adapter, tmp_path / "merged")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base.iterdir())
    name = "model.layers.1.mlp.gate_proj.weight"
    ka, kb = adapter.pairs[name]
    with safe_open(str(base / files[0]), "pt") as b, safe_open(str(out / files[0]), "pt") as m, \
            safe_open(str(adapter.path / "adapter_model.safetensors"), "pt") as lo:
        assert list(m.keys()) == list(b.keys())
        want = (b.get_tensor(name).float() + 1.5 * 2.0 * (lo.get_tensor(kb).float() @ lo.get_tensor(ka).float()))
        assert m.get_tensor(name).dtype == torch.bfloat16
        assert torch.equal(m.get_tensor(name), want.to(torch.bfloat16))
        untouched = "model.layers.1.input_layernorm.weight"
        assert torch.equal(m.get_tensor(untouched), b.get_tensor(untouched))


def _edited(adapter, tmp_path, **changes):
    copy = tmp_path / "edited"
    shutil.copytree(adapter, copy)
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    return copy


@pytest.mark.parametrize("changes,message", [
    ({"peft_type": "IA3"}, "adapter type IA3 is not supported"),
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "fully trained extra modules"),
    ({"r": 0}, "integer r >= 1"),
])
def test_other_adapter_kinds_are_refused(checkpoints, adapters, tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        build(str(checkpoints("tiny-qwen2.5")), "cpu-fp32", tmp_path / "art",
              adapter=_edited(adapters["tiny-qwen2.5"], tmp_path, **changes), quiet=True)
    assert not (tmp_path / "art").exists()


def test_an_adapter_for_another_base_is_refused_in_one_line(checkpoints, adapters, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(checkpoints("tiny-qwen3")), "-t",
                        "cpu-fp32", "-o", str(tmp_path / "art"), "--adapter", str(adapters["tiny-qwen2.5"])],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]  # after the progress lines: one error line
    assert last.startswith("edgeqwen: error: adapter") and "an adapter for another base model" in last
    assert not (tmp_path / "art").exists()
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(checkpoints("tiny-qwen3")), "-t",
                        "cpu-fp32", "--adapter", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "expected a peft adapter folder" in r.stderr


@pytest.mark.slow
def test_validate_asks_for_the_adapter_and_checks_it_is_the_same(checkpoints, adapters, tmp_path):
    base = checkpoints("tiny-qwen2.5")
    art = build(str(base), "cpu-fp32", tmp_path / "art", adapter=adapters["tiny-qwen2.5"], quiet=True).folder
    cli = [sys.executable, "-m", "edgeqwen.cli", "validate", str(art), "--reference", str(base)]
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 2 and "pass it with --adapter" in r.stderr
    r = subprocess.run(cli + ["--adapter", str(adapters["tiny-qwen3"])], capture_output=True, text=True)
    assert r.returncode == 2 and "is not the one merged into this artifact" in r.stderr
    r = subprocess.run(cli + ["--adapter", str(adapters["tiny-qwen2.5"])], capture_output=True, text=True)
    assert r.returncode == 0 and "verdict: PASS" in r.stdout


def test_a_corrupt_adapter_file_is_one_line(checkpoints, adapters, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(adapters["tiny-qwen2.5"], bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        open_adapter(bad)
