"""Olive's GPTQ before export (the cpu-int4 default): Olive's packed weights repacked into MatMulNBits
bit for bit, layers whose input size the group does not divide, the memory gate, and the parity gate
seeing a repacked weight that is not what Olive chose.
Tier 1: one Olive QuantLinear against one MatMulNBits in onnxruntime. Tier 2: builds of fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _olive_linear(folder: Path, k: int, n: int, group: int, symmetric: bool, seed: int = 0):
    """An Olive QuantLinear (4-bit) saved as a checkpoint's tensors; returns its dequantised weight [N, K]."""
    import torch
    from olive.common.quant.nn import QuantLinear
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=False)
    q = QuantLinear.from_module(lin, bits=4, symmetric=symmetric, group_size=group)
    tensors = {"layer.qweight": q.qweight, "layer.scales": q.scales.float()}
    if not symmetric:
        tensors["layer.qzeros"] = q.qzeros
    save_file({k_: v.contiguous() for k_, v in tensors.items()}, str(folder / "model.safetensors"))
    w = q.unpack_and_dequantize(q.qweight, q.scales, None if symmetric else q.qzeros)
    return w.float().numpy()


@pytest.mark.parametrize("k,n,group,symmetric", [(256, 96, 32, False), (256, 64, 128, True), (200, 48, -1, False),
                                                 (896, 32, 128, False)])
def test_an_olive_quantised_linear_is_repacked_bit_for_bit(tmp_path, k, n, group, symmetric):
    """MatMulNBits at accuracy level 0 (fp32 compute) with the repacked tensors computes x @ W^T for Olive's
    own dequantised W; a per-row group (K=200: no power-of-two group divides it) becomes one padded block."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeqwen.compiler.export.data_file import DataFile
    from edgeqwen.compiler.export.prequantized import OliveQuantConfig, PrequantizedWeights
    from edgeqwen.compiler.export.weights import FloatWeights, Sink
    from edgeqwen.safetensors_io import CheckpointTensors

    w = _olive_linear(tmp_path, k, n, group, symmetric)
    fmt = PrequantizedWeights(OliveQuantConfig(4, group, symmetric, {}), FloatWeights(np.dtype(np.float32)))
    with CheckpointTensors(tmp_path, ["model.safetensors"]) as src:
        data = DataFile(tmp_path / "model.onnx.data")
        sink = Sink(data, src, [], [], set())
        fmt.write(sink, "W", ("layer.weight",))
        fmt.node(sink, "A", "Y", "/layer", [t.name for t in sink.inits], n, k)
        data.close()
    assert sink.consumed == set(src.where)  # qweight, scales (and qzeros): every tensor used
    graph = helper.make_graph(sink.nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])], sink.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    x = np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"A": x})[0]
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4)


def test_group_overrides_follow_the_input_sizes():
    from edgeqwen.compiler.torch_quant import group_overrides
    from edgeqwen.model.spec import parse_spec

    cfg = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 112, "num_attention_heads": 7,
           "intermediate_size": 200, "num_hidden_layers": 2, "vocab_size": 256}
    out = group_overrides(parse_spec(cfg), 128)
    assert out["model.layers.1.self_attn.q_proj"] == {"group_size": 16}  # 112 = 7 x 16
    assert out["model.layers.0.mlp.down_proj"] == {"group_size": -1}  # 200: no power of two >= 16 divides it
    big = {**cfg, "hidden_size": 896, "num_attention_heads": 14, "intermediate_size": 4864}
    assert group_overrides(parse_spec(big), 128) == {}


@pytest.mark.parametrize("target", ["cpu-int4", "android-cpu-int4"])
def test_layerwise_gptq_is_refused_only_when_one_layer_does_not_fit(target):
    """The profiles' Gptq runs layer by layer: Qwen3-8B's shape fits in 7 GiB (3.42 GiB measured; the
    whole-model pass would need about 66 GiB); a machine that cannot hold one layer is refused before loading, naming the streaming
    profile beside it; implementation = "olive" is checked as the whole-model pass it is."""
    from dataclasses import replace

    from edgeqwen.compiler.torch_quant import check_memory, leading_torch_passes
    from edgeqwen.errors import CheckpointError
    from edgeqwen.targets import load_profile
    from edgeqwen.testmodels.fixtures import FIXTURES

    steps = leading_torch_passes(list(load_profile(target).olive_passes))
    spec, params = FIXTURES["qwen3-8b-shape"].model_spec, 8_190_735_360
    check_memory(steps, params, target, available=7 * 2**30, spec=spec)
    with pytest.raises(CheckpointError) as e:
        check_memory(steps, params, target, available=2**30, spec=spec)
    msg = str(e.value)
    assert "\n" not in msg and "layer by layer" in msg and "1.0 GiB available" in msg and f"such as {target}-fast," in msg
    olive = [replace(s, options={**s.options, "implementation": "olive"}) for s in steps]
    with pytest.raises(CheckpointError) as e:
        check_memory(olive, params, target, available=7 * 2**30, spec=spec)
    assert "whole model in memory" in str(e.value) and f"such as {target}-fast," in str(e.value)


def test_a_gptq_build_is_parity_checked_against_olives_values(artifacts):
    m = artifacts("tiny-qwen2.5", "cpu-int4").manifest
    v = m["validation"]
    assert v["passed"], v["failures"]
    w = v["weights"]
    assert w["prequantized"] == 2 * 7 and not w["unchecked"] and w["prequantized_max_steps"] <= 1e-3
    steps = [s["profile_pass"] for s in m["quantization"]["export"]["steps"]]
    assert steps == ["Gptq", "ModelBuilder", "OnnxBlockWiseRtnQuantization"]


@pytest.mark.slow  # a GPTQ build of its own; the quick tier's failing-gate case is RTN's (test_parity_reference)
def test_a_repacked_weight_unlike_olives_fails_the_gate(checkpoints, tmp_path, monkeypatch):
    """A deliberately wrong graph: the exporter writes one GPTQ layer's scales x 1.5 (simulated by changing
    the quantised checkpoint after export). The graph check cannot see it (it computes with the artifact's
    own weights); the exact weight check does, and the build is refused."""
    import torch
    from safetensors.torch import load_file, save_file

    from edgeqwen.compiler.export import genai
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.errors import ValidationFailed

    real = genai.write

    def write_then_corrupt(ckpt, plan, out, log=lambda s: None, weights_from=None):
        done = real(ckpt, plan, out, log, weights_from=weights_from)
        scales = "model.layers.1.mlp.down_proj.scales"  # in the layer-wise checkpoint's shard of layer 1
        f = Path(weights_from) / json.loads((Path(weights_from) / "model.safetensors.index.json").read_text())[
            "weight_map"][scales]
        t = load_file(str(f))
        t[scales] = t[scales] * torch.tensor(1.5)
        save_file(t, str(f), metadata={"format": "pt"})
        return done

    monkeypatch.setattr(genai, "write", write_then_corrupt)
    with pytest.raises(ValidationFailed) as e:
        build(str(checkpoints("tiny-qwen2.5")), "cpu-int4", tmp_path / "art", quiet=True, loss_text=False)
    assert "model.layers.1.mlp.down_proj.weight" in str(e.value)
    rejected = json.loads((tmp_path / "art.rejected" / "edgeqwen.json").read_text())["validation"]
    assert rejected["summary"]["kl_mean"] < 1e-6  # parity of the graph alone passed
    assert [t["tensor"] for t in rejected["weights"]["not_quantisations"]] == ["model.layers.1.mlp.down_proj.weight"]


@pytest.mark.slow
def test_gptq_loses_less_than_rtn_on_the_trained_model(tmp_path):
    """The quality default against the speed-first profile on a model that learned something (the trained
    small Qwen3, text it never saw): GPTQ + 8-bit head costs less KL against fp32 than RTN int4."""
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.testmodels.trained import DEFAULT_DIR

    ckpt = str(DEFAULT_DIR)
    kl = {t: build(ckpt, t, tmp_path / t, quiet=True).manifest["validation"]["quantization_loss"]["summary"]["kl_mean"]
          for t in ("cpu-int4", "cpu-int4-fast")}
    assert kl["cpu-int4"] < kl["cpu-int4-fast"] / 3, kl
