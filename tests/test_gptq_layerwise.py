"""GPTQ layer by layer (edgeqwen.compiler.gptq) against Olive's Gptq pass on the whole model: the same
calibration windows and options give the same packed tensors, bit for bit, on float32 checkpoints.

Why exact equality holds: the layer-wise code calls Olive's own solver (Gptq.process_module) and packer
(QuantLinear.from_module); it accumulates the Hessians with Olive's formula operation for operation; and
each decoder layer is transformers' own class called with the arguments the model's forward would give it
(SDPA, no mask, the rotary module's tables), one window at a time as Olive's batches of 1. Any difference
in evaluation order would show here as differing codes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

OPTIONS = {"bits": 4, "group_size": 256, "sym": False, "calibration_samples": 4, "calibration_tokens": 64}


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _both(checkpoint: Path, work: Path, options: dict = OPTIONS) -> tuple[Path, Path]:
    """(layer-wise output, Olive's output) of one Gptq step with ``options``."""
    from edgeqwen.compiler.torch_quant import TorchQuantStep, run

    out = {impl: run([TorchQuantStep("Gptq", {**options, "implementation": impl})], checkpoint, work / impl,
                     lambda s: None) for impl in ("layerwise", "olive")}
    return out["layerwise"], out["olive"]


def _k200(root: Path) -> Path:
    """tiny-qwen2 (untied, q/k/v bias) with intermediate 200: no power-of-two group divides down_proj's K,
    which Olive then quantises one group per row with act order (desc_act None means true for group -1)."""
    from edgeqwen.testmodels.fixtures import FIXTURES, make_checkpoint

    spec = replace(FIXTURES["tiny-qwen2"], name="tiny-k200", intermediate=200)
    return make_checkpoint(spec.name, root / spec.name, spec=spec)


# quick: one family (the quick tier is at its 5-minute budget); slow: the others, Qwen3.5's own calibration forward
@pytest.mark.parametrize("fixture", ["tiny-qwen2.5", pytest.param("tiny-qwen3", marks=pytest.mark.slow),
                                     pytest.param("tiny-k200", marks=pytest.mark.slow),
                                     pytest.param("tiny-qwen3.5", marks=pytest.mark.slow)])
def test_layerwise_gptq_packs_exactly_what_olives_pass_packs(checkpoints, tmp_path, fixture):
    """tiny-qwen2.5: tied, q/k/v biases; tiny-qwen3: q/k norms, head_dim 32; tiny-k200: a per-row group with
    act order; tiny-qwen3.5: Gated DeltaNet layers calibrated through transformers' chunked delta rule, gated
    attention, the multimodal checkpoint's model.language_model. names (Olive's overrides name the text
    model's modules: model.layers.). Every tensor equal (packed codes, zero points, scales, the float
    tensors) and the same quantization_config (quant_method olive, the group overrides)."""
    import torch

    ckpt = _k200(tmp_path) if fixture == "tiny-k200" else checkpoints(fixture)
    mine, olive = _both(ckpt, tmp_path)
    a, b = _tensors(mine), _tensors(olive)
    assert sorted(a) == sorted(b)
    differing = [n for n in b if a[n].dtype != b[n].dtype or not torch.equal(a[n], b[n])]
    assert not differing, differing
    qa, qb = (json.loads((f / "config.json").read_text())["quantization_config"] for f in (mine, olive))
    assert qa == qb and qa["quant_method"] == "olive"
    if fixture == "tiny-k200":
        assert qa["overrides"]["model.layers.1.mlp.down_proj"] == {"group_size": -1}
    if fixture == "tiny-qwen3.5":
        assert "model.language_model.layers.0.linear_attn.in_proj_qkv.qweight" in a
        assert qa["overrides"]["model.layers.0.linear_attn.in_proj_qkv"] == {"group_size": 64}


def test_the_layerwise_checkpoint_is_complete_and_sharded(checkpoints, tmp_path):
    """One shard for the table, one per layer, one for the final norm (and an untied lm_head); an index
    naming them; the tokenizer and generation files; float tensors kept in the checkpoint's dtype (bf16)
    while the scales GPTQ chose stay fp32."""
    from edgeqwen.compiler.torch_quant import TorchQuantStep, run
    from edgeqwen.safetensors_io import CheckpointTensors

    ckpt = checkpoints("tiny-qwen3", "bfloat16")
    out = run([TorchQuantStep("Gptq", OPTIONS)], ckpt, tmp_path, lambda s: None)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(set(index.values())) and len(shards) == 2 + 2
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    with CheckpointTensors(out, shards) as t:
        dtype = {n: t.where[n].entries[n]["dtype"] for n in t.where}
    assert dtype["model.embed_tokens.weight"] == dtype["lm_head.weight"] == "BF16"
    assert dtype["model.layers.1.self_attn.k_norm.weight"] == "BF16"
    assert dtype["model.layers.1.mlp.down_proj.scales"] == "F32" and dtype["model.layers.1.mlp.down_proj.qweight"] == "U8"
    assert "model.layers.0.self_attn.q_proj.weight" not in index


def test_layerwise_gptq_refuses_what_it_does_not_do():
    from edgeqwen.compiler.gptq import GptqOptions
    from edgeqwen.compiler.torch_quant import TorchQuantStep, implementation
    from edgeqwen.errors import ProfileError

    assert GptqOptions.parse({"bits": 4, "group_size": 256, "sym": False}).module("x").group_size == 256
    for bad in ({"lm_head": True}, {"blocksize": 64}, {"group_size": 0}, {"desc_act": True, "group_size": 128},
                {"data_config": {"name": "wikitext"}}):
        with pytest.raises(ProfileError):
            GptqOptions.parse(bad)
    with pytest.raises(ProfileError):
        implementation(TorchQuantStep("Rtn", {"implementation": "layerwise"}))
    assert implementation(TorchQuantStep("Gptq", {})) == "layerwise"
    assert implementation(TorchQuantStep("Rtn", {})) == "olive"


def test_qkv_take_one_format_as_olive_gives_them():
    """Olive's normalize_qkv_quant_config: q, k and v of a layer get the most precise of their formats."""
    from edgeqwen.compiler.gptq.options import GptqOptions, module_formats

    o = GptqOptions(group_size=128, overrides={"l.k": {"group_size": 32}, "l.v": {"bits": 8}})
    f = module_formats(o, [("l.q", "l.k", "l.v"), ("l.o",)])
    assert {f["l.q"], f["l.k"], f["l.v"]} == {f["l.v"]} and f["l.v"].bits == 8 and f["l.v"].group_size == 128
    assert f["l.o"] == o.default()


def test_the_layerwise_peak_is_one_layers_not_the_models():
    """Qwen3-8B's shape at the profile's 32 x 512 windows: the model covers the measured peak (5.93 GiB,
    /usr/bin/time -v; the whole-model pass would need about 66 GiB); the terms are the ones the module
    docstring lists."""
    from edgeqwen.build_memory import layer_dims, layerwise_peak
    from edgeqwen.testmodels.fixtures import FIXTURES

    spec = FIXTURES["qwen3-8b-shape"].model_spec
    peak = layerwise_peak(layer_dims(spec), 32, 512)
    assert 5.93 * 2**30 <= peak.total < 6.5 * 2**30
    small = layerwise_peak(layer_dims(FIXTURES["qwen2.5-0.5b-shape"].model_spec), 32, 512)
    assert small.total >= 1.28e9  # measured on the 0.5B shape
    assert peak.states == 32 * 512 * 4096 * 4 and peak.hessians == (2 * 4096**2 + 4096**2 + 12288**2) * 4
