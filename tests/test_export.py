"""Export tier: tiny Qwen2 / Qwen2.5 / Qwen3 checkpoints built with cpu-fp32 and cpu-int4, checked
against transformers (by the build's own validation) and by reading the graphs back."""

from collections import Counter

import numpy as np
import onnx
import pytest

from edgeqwen.testmodels.fixtures import FIXTURES
from edgeqwen.targets import load_profile

# The quick subset keeps Qwen2.5 and Qwen3 (the artifacts other quick tests build anyway).
FAMILIES = [pytest.param("tiny-qwen2", marks=pytest.mark.slow), "tiny-qwen2.5", "tiny-qwen3",
            pytest.param("tiny-qwen3-tied", marks=pytest.mark.slow)]


def graph(result) -> onnx.ModelProto:
    return onnx.load(str(result.folder / "model.onnx"))


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def tensors_of_size(model, n):
    return [t.name for t in model.graph.initializer if int(np.prod(t.dims)) == n]


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_matches_transformers_exactly(artifacts, name):
    v = artifacts(name, "cpu-fp32").manifest["validation"]
    s = v["summary"]
    assert v["passed"], v["failures"]
    assert s["top1_agreement"] == 1.0
    assert s["greedy_match_min"] >= 32
    assert all(p["greedy_match"] == p["greedy_tokens"] == 48 for p in v["prompts"])
    # measured 5e-6 .. 1e-5 on these fixtures; the profile allows 1e-3
    assert s["max_abs_logit_diff"] < 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_int4_passes_parity_and_reports_its_loss(artifacts, name):
    """The gate is parity (the fp32-compute twin against transformers with the artifact's weights: exact);
    the quantisation loss against fp32 is reported apart (random fixtures: KL mean 0.06-0.16 nats)."""
    v = artifacts(name, "cpu-int4", loss_text=True).manifest["validation"]
    assert v["passed"], v["failures"]
    assert v["summary"]["max_abs_logit_diff"] < 1e-3 and v["summary"]["top1_agreement"] == 1.0
    assert v["weights"]["max_error_steps"] <= 1.001
    loss = v["quantization_loss"]["summary"]
    assert 1e-3 < loss["kl_mean"] < 1.0 and loss["kl_p90"] <= loss["kl_p99"]


@pytest.mark.parametrize("name", FAMILIES)
def test_int4_graph_holds_matmulnbits_with_profile_bits_and_block(artifacts, name):
    """The data-free profile: every layer at the k-quant pass's bits and block, the lm_head at its per-node
    override, all with zero points (k-quant is asymmetric)."""
    result = artifacts(name, "cpu-int4-fast")
    model = graph(result)
    spec = FIXTURES[name]
    quant = next(p for p in load_profile("cpu-int4-fast").olive_passes if p.type == "OnnxKQuantQuantization").options
    head = quant["customized_weight_config"]["/lm_head/MatMul"]
    mnb = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    # per layer: qkv, o, gate, up, down (genai fuses q/k/v into one MatMul) + the lm_head
    assert len(mnb) == 5 * spec.layers + 1
    for n in mnb:
        a = attrs(n)
        block = head["group_size"] if n.output[0] == "logits" else quant["block_size"]
        assert (a["bits"], a["block_size"], a["accuracy_level"]) == (quant["bits"], block, quant["accuracy_level"])
        assert len(n.input) == 4 and n.input[3], f"{n.name}: no zero points"
    float_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in {t.name for t in model.graph.initializer}]
    assert float_matmuls == []
    # what the manifest claims is what the graph holds
    claimed = result.manifest["quantization"]["weight_ops"]
    assert {"op": "MatMulNBits", "bits": quant["bits"], "block_size": quant["block_size"],
            "accuracy_level": quant["accuracy_level"], "zero_points": True, "count": len(mnb) - 1} in claimed


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("target", ["cpu-fp32", "cpu-int4", "cpu-int4-fast"])
def test_tied_embeddings_stored_once(artifacts, name, target):
    spec = FIXTURES[name]
    model = graph(artifacts(name, target))
    vocab_by_hidden = spec.vocab_size * spec.hidden  # Qwen2.5-7B's mirror: 152,064
    emb = next(n for n in model.graph.node if "input_ids" in n.input and n.op_type.startswith("Gather"))
    if target == "cpu-fp32":
        tables = tensors_of_size(model, vocab_by_hidden)  # float [V, H] or [H, V]
    else:
        bits = 8 if target == "cpu-int4" else 4  # the quality default keeps the table at 8 bits
        tables = tensors_of_size(model, vocab_by_hidden * bits // 8)  # packed bytes
    if spec.tied:
        assert len(tables) == 1, tables
        assert artifacts(name, target).manifest["quantization"]["embedding"]["shared_with_lm_head"]
    else:  # two tables: the embedding's and the lm_head's (padded to whole blocks when K is smaller)
        head = next(n for n in model.graph.node if "logits" in n.output)
        assert emb.input[0] != head.input[1] and len(tables) >= 1, tables
        assert not artifacts(name, target).manifest["quantization"]["embedding"]["shared_with_lm_head"]
    if target != "cpu-fp32":
        assert emb.op_type == "GatherBlockQuantized" and attrs(emb)["bits"] == bits


def test_qwen_specific_graph_parts(artifacts):
    ops2 = Counter(n.op_type for n in graph(artifacts("tiny-qwen2.5", "cpu-fp32")).graph.node)
    ops3 = Counter(n.op_type for n in graph(artifacts("tiny-qwen3", "cpu-fp32")).graph.node)
    m2 = graph(artifacts("tiny-qwen2.5", "cpu-fp32"))
    assert any("qkv_proj.Add.bias" in t.name or "bias" in t.name for t in m2.graph.initializer)  # Qwen2 q/k/v bias
    assert ops2["GroupQueryAttention"] == ops3["GroupQueryAttention"] == 2
    # Qwen3's q_norm / k_norm: extra RMSNorms per layer that Qwen2 does not have
    assert ops3["SimplifiedLayerNormalization"] > ops2["SimplifiedLayerNormalization"]
    rt = artifacts("tiny-qwen3", "cpu-fp32").manifest["runtime"]
    assert rt["family"] == "qwen3" and rt["thinking"] and rt["special_tokens"]["think_start"] == 151667


@pytest.mark.slow
@pytest.mark.parametrize("dtype, target", [("bfloat16", "cpu-fp32"), ("float16", "cpu-int8")])
def test_half_precision_checkpoints_build(artifacts, dtype, target):
    result = artifacts("tiny-qwen3", target, dtype=dtype)
    assert result.manifest["source"]["dtype"] == dtype
    assert result.manifest["validation"]["passed"], result.manifest["validation"]["failures"]


def test_manifest_is_complete(artifacts):
    m = artifacts("tiny-qwen2.5", "cpu-int4").manifest
    assert m["format_version"] == 1
    assert m["source"]["architecture"] == "Qwen2ForCausalLM" and len(m["source"]["config_sha256"]) == 64
    assert len(m["source"]["weights_sha256"]) == 64
    assert m["profile"]["name"] == "cpu-int4"
    assert {"olive-ai", "onnxruntime", "onnxruntime-genai", "transformers", "torch"} <= set(m["tools"])
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "chat_template.jinja"} <= set(m["files"])
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["runtime"]["threads"] == "auto" and "intra_op_num_threads" not in m["runtime"]["session_options"]
    assert m["validation"]["summary"]["positions"] > 100


@pytest.mark.slow
def test_yarn_rope_scaling_matches_transformers(artifacts):
    """The builder gets YaRN wrong (its tables were off by up to 2.3); the streaming exporter takes the
    tables from transformers' own rope code, as the rope_caches pass does on the Olive path."""
    m = artifacts("tiny-qwen2.5-yarn", "cpu-fp32").manifest
    assert m["source"]["rope"]["rope_type"] == "yarn"
    assert m["graph_passes"]["rope_caches"]["by"] == "streaming exporter"
    assert m["validation"]["passed"] and m["validation"]["summary"]["top1_agreement"] == 1.0


def test_length_dependent_rope_is_refused():
    from edgeqwen.model.spec import SpecError, parse_spec

    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
              "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 128, "intermediate_size": 96,
              "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}
    with pytest.raises(SpecError, match="rope type 'dynamic' is not supported"):
        parse_spec(config)
