"""android-nnapi: static-shape prefill/decode graphs, the static runtime backend, the usability checker.

Tier 1: graphs written from hand-made weights (every shape static, only NNAPI ops, 2-D Gemm with
constant weights). Tier 2: tiny Qwen2.5/Qwen3 checkpoints built and validated against transformers.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeqwen.compiler.package_steps.mobile_usability import parse_nnapi
from edgeqwen.compiler.pipeline import build
from edgeqwen.compiler.static.decoder import Weights, decoder_graph, rotate_half_matrix
from edgeqwen.model.spec import parse_spec
from edgeqwen.model.tensors import tensor_map
from edgeqwen.errors import ContextOverflow, ProfileError
from edgeqwen.runtime import load
from edgeqwen.targets import load_profile

def _nnapi_table() -> set[str]:
    """ai.onnx op names in onnxruntime's own NNAPI table (tools/mobile_helpers/nnapi_supported_ops.md)."""
    import onnxruntime.tools.mobile_helpers as mh

    text = (Path(mh.__file__).parent / "nnapi_supported_ops.md").read_text()
    return {line.split("|")[1].split(":")[1] for line in text.splitlines() if line.startswith("|ai.onnx:")}


def _toy(qk_norm: bool, tied: bool, kv_heads: int = 2):
    rng = np.random.default_rng(0)
    # Qwen3 (q/k norm, no bias) or Qwen2 (q/k/v bias), through the one parser
    dims = parse_spec({"architectures": ["Qwen3ForCausalLM" if qk_norm else "Qwen2ForCausalLM"], "num_hidden_layers": 2,
                       "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": kv_heads, "head_dim": 16,
                       "intermediate_size": 48, "vocab_size": 50, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied})
    t = {"model.embed_tokens.weight": rng.normal(size=(50, 32)), "model.norm.weight": np.ones(32)}
    if not tied:
        t["lm_head.weight"] = rng.normal(size=(50, 32))
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = t[p + "post_attention_layernorm.weight"] = np.ones(32)
        for n, shape in (("q", (64, 32)), ("k", (kv_heads * 16, 32)), ("v", (kv_heads * 16, 32)), ("o", (32, 64))):
            t[p + f"self_attn.{n}_proj.weight"] = rng.normal(size=shape)
            if n != "o":
                t[p + f"self_attn.{n}_proj.bias"] = rng.normal(size=shape[0])
        t[p + "self_attn.q_norm.weight"] = t[p + "self_attn.k_norm.weight"] = np.ones(16)
        for n, shape in (("gate", (48, 32)), ("up", (48, 32)), ("down", (32, 48))):
            t[p + f"mlp.{n}_proj.weight"] = rng.normal(size=shape)
    t = {k: v.astype(np.float32) for k, v in t.items()}
    cos = rng.normal(size=(40, 16)).astype(np.float32)
    return Weights(t, tensor_map(dims), cos, cos[::-1].copy()), dims


def test_rotate_half_matrix():
    x = np.arange(8, dtype=np.float32)[None]
    np.testing.assert_array_equal(x @ rotate_half_matrix(8), np.concatenate([-x[:, 4:], x[:, :4]], axis=1))


@pytest.mark.parametrize("qk_norm,tied,kv", [(False, True, 2), (True, False, 1), (True, True, 4)])
def test_static_graph_shapes_and_ops(qk_norm, tied, kv):
    w, dims = _toy(qk_norm, tied, kv)
    model = decoder_graph(w, dims, chunk=8, cache=32, name="t")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for v in values:  # every tensor's shape fully known: what NNAPI compiles against
        dims_ = v.type.tensor_type.shape.dim
        assert dims_ and all(d.HasField("dim_value") for d in dims_) or not dims_, v.name
    assert {n.domain for n in model.graph.node} <= {""}
    assert {n.op_type for n in model.graph.node} <= _nnapi_table()
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gemm":  # FULLY_CONNECTED: constant 2-D [out, in] weight
            assert n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    out = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert out["logits"] == [1, 50] and out["present_key_0"] == [kv, 8, 16]
    # tied: the embedding table is stored once and read by both the Gather and the lm_head Gemm
    assert ("lm_head.weight" in inits) == (not tied)


def test_static_graph_runs_in_onnxruntime():
    import onnxruntime as ort

    w, dims = _toy(True, False)
    model = decoder_graph(w, dims, chunk=4, cache=16, name="t")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([1, 2, 3, 4], np.int32), "position_ids": np.arange(4, dtype=np.int32),
            "attention_mask": np.zeros((4, 20), np.float32)}
    for i in range(2):
        feed[f"past_key_{i}"] = feed[f"past_value_{i}"] = np.zeros((2, 16, 16), np.float32)
    logits = sess.run(["logits"], feed)[0]
    assert logits.shape == (1, 50) and np.isfinite(logits).all()


def test_checker_output_parsing():
    text = ("INFO:  Checking NNAPI\nINFO:  3 partitions with a total of 90/100 nodes can be handled by the NNAPI EP.\n"
            "INFO:  \tPartition sizes: [50, 30, 10]\nINFO:  \tUnsupported ops: ai.onnx:Where,ai.onnx:Expand\n"
            "INFO:  Model should perform well with NNAPI as is: NO\nINFO:  ================\n")
    r = parse_nnapi(text)
    assert r == {"partitions": 3, "nodes_supported": 90, "nodes_total": 100, "coverage": 0.9,
                 "partition_sizes": [50, 30, 10], "unsupported_ops": ["ai.onnx:Where", "ai.onnx:Expand"],
                 "performs_well": False}


def _profile(tmp_path, **overrides) -> Path:
    text = (Path(__file__).parents[1] / "targets" / "android-nnapi.toml").read_text()
    for key, value in overrides.items():
        text = text.replace(f"{key} = ", f"{key} = {value}  # ", 1)
    path = tmp_path / "android-nnapi.toml"
    path.write_text(text)
    return path


def test_static_profile_keys(tmp_path):
    assert load_profile("android-nnapi").static_shapes.cache_length == 1024
    with pytest.raises(ProfileError, match="prefill_chunk must be at least 2"):
        load_profile(str(_profile(tmp_path, prefill_chunk=2048)))
    bad = tmp_path / "bad"
    bad.mkdir()
    cpu = (Path(__file__).parents[1] / "targets" / "cpu-fp32.toml").read_text()
    (bad / "cpu-fp32.toml").write_text(cpu + "\n[static_shapes]\nprefill_chunk = 8\ncache_length = 64\n")
    with pytest.raises(ProfileError, match="only applies to backend"):
        load_profile(str(bad / "cpu-fp32.toml"))
    nnapi = (Path(__file__).parents[1] / "targets" / "android-nnapi.toml").read_text()
    without = nnapi.split("[static_shapes]")[0] + "[session_options]" + nnapi.split("[session_options]")[1]
    (bad / "android-nnapi.toml").write_text(without)
    with pytest.raises(ProfileError, match="needs a \\[static_shapes\\] table"):
        load_profile(str(bad / "android-nnapi.toml"))


@pytest.mark.slow
@pytest.mark.parametrize("name, target", [("tiny-qwen3", "android-nnapi"), ("tiny-qwen2.5", "android-nnapi-uint8")])
def test_nnapi_artifact(artifacts, name, target):
    """Each profile once, the fixtures alternating (q/k norm fp32; q/k/v biases through uint8 QDQ): all four
    pairs passed before the suite's time budget cut them to two."""
    result = artifacts(name, target)
    m, folder = result.manifest, result.folder
    v = m["validation"]
    assert v["passed"], v["failures"]
    graphs = m["quantization"]["graphs"]
    if target == "android-nnapi":
        assert v["summary"]["max_abs_logit_diff"] < 1e-3 and v["summary"]["greedy_match_min"] == 48
        assert set(graphs["decode"]["initializer_bytes"]) == {"float32", "int64"}
    else:  # uint8 QDQ around every Gemm but the lm_head; most weight bytes are uint8
        ops = graphs["decode"]["op_counts"]
        assert ops["DequantizeLinear"] > ops["Gemm"] - 1 and ops["QuantizeLinear"] >= ops["Gemm"] - 1
        c = json.loads((folder / "config.json").read_text())
        h, nh, nkv, i = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
        d = c.get("head_dim") or h // nh
        per_layer = 2 * nh * d * h + 2 * nkv * d * h + 3 * i * h  # q, o, k, v, gate, up, down
        # one byte per layer weight (+ a zero point per tensor); the vocabulary table stays fp32
        assert c["num_hidden_layers"] * per_layer <= graphs["decode"]["initializer_bytes"]["uint8"] <= \
            c["num_hidden_layers"] * per_layer + 1024
        assert graphs["decode"]["initializer_bytes"]["float32"] >= c["vocab_size"] * h * 4
    files = set(m["files"])
    assert {"prefill.ort", "decode.ort", "required_operators.config", "usability/prefill.txt",
            "usability/decode.txt"} <= files
    assert not any(f.endswith(".onnx") or f.endswith(".data") for f in files)
    rt = m["runtime"]
    assert rt["backend"] == "static" and rt["execution_provider"] == "nnapi" and rt["context_length"] == 1024
    assert rt["static"]["graphs"]["decode"] == {**rt["static"]["graphs"]["decode"], "file": "decode.ort", "chunk": 1}
    for role in ("prefill", "decode"):  # the goal: one NNAPI partition over > 90% of the nodes
        nnapi = m["package_steps"]["mobile_usability"][role]["nnapi"]
        assert nnapi["partitions"] == 1 and nnapi["coverage"] > 0.9, nnapi
        assert "NNAPI should work well" in (folder / f"usability/{role}.txt").read_text()
    ops = (folder / "required_operators.config").read_text()
    # the graphs use no com.microsoft op; the uint8 ones carry a runtime-optimisation record (QDQ
    # group -> QGemm) that onnxruntime applies only where the CPU provider runs them
    contrib = [line for line in ops.splitlines() if line.startswith("com.microsoft")]
    assert contrib == ([] if target == "android-nnapi" else ["com.microsoft;1;QGemm"]) and "Gemm" in ops
    assert ("DequantizeLinear" in ops) == (target == "android-nnapi-uint8")


@pytest.mark.slow
def test_multi_chunk_prompts_and_tiny_cache(checkpoints, tmp_path):
    """Chunk 8 makes every validation prompt span several left-padded prefill calls; cache 160 bounds
    the context, and a prompt beyond it gets a clear error."""
    profile = _profile(tmp_path, prefill_chunk=8, cache_length=160)
    result = build(str(checkpoints("tiny-qwen3")), str(profile), tmp_path / "art", quiet=True)
    assert result.manifest["validation"]["passed"], result.manifest["validation"]["failures"]
    assert result.manifest["validation"]["summary"]["max_abs_logit_diff"] < 1e-3
    engine = load(result.folder, provider="cpu")
    with pytest.raises(ContextOverflow, match="exceeds the context length 160"):
        engine.generate(list(range(100, 250)), max_new_tokens=20)


@pytest.mark.slow
def test_run_streams_from_the_nnapi_artifact(artifacts):
    folder = artifacts("tiny-qwen3", "android-nnapi").folder
    with pytest.warns(RuntimeWarning, match="built for the 'nnapi' execution provider"):
        engine = load(folder)  # desktop onnxruntime has no NNAPI: the same graphs on the CPU provider
    assert engine.provider == "cpu"
    pieces = list(engine.stream("Hello", max_new_tokens=6, temperature=0))
    assert len(pieces) >= 1 and engine.generate("Hello", max_new_tokens=6, temperature=0).token_ids
    session = engine.session(think=False)  # multi-turn reuses the static KV buffers (rewound, then refilled)
    session.send("Hi there", max_new_tokens=5, temperature=0).finish()
    second = session.send("And again?", max_new_tokens=5, temperature=0).finish()
    assert session.reused_tokens > 5
    fresh = engine.chat(session.messages[:-1], think=False, max_new_tokens=5, temperature=0).finish()
    assert second.token_ids == fresh.token_ids
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "4",
                        "--temperature", "0", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metrics"]["generated_tokens"] == 4


@pytest.mark.parametrize("qk_norm,kv", [(False, 2), (True, 1)])
def test_static_graph_meets_nnapi_builder_conditions(qk_norm, kv):
    """Conditions of onnxruntime's NNAPI op builders (core/providers/nnapi/nnapi_builtin/builders/impl)
    that the usability checker does not test: it only matches op names. Tensors of rank <= 4;
    Softmax on 2-D or 4-D input; MatMul either 2-D x constant 2-D, or batched with equal ranks and
    equal leading dimensions (no broadcasting); Gemm without transA/alpha/beta; Reshape shapes,
    Slice bounds and Gather indices constant or int32."""
    w, dims = _toy(qk_norm, False, kv)
    model = onnx.shape_inference.infer_shapes(decoder_graph(w, dims, chunk=8, cache=32, name="t"), strict_mode=True)
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.input) + list(g.output)}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    consts = {t.name for t in g.initializer}
    assert all(len(s) <= 4 for s in shapes.values())
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Softmax":
            assert len(shapes[n.input[0]]) in (2, 4) and attrs["axis"] == -1
        if n.op_type == "MatMul":
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            assert (len(a) == len(b) == 2 and n.input[1] in consts) or (len(a) == len(b) >= 3 and a[:-2] == b[:-2])
        if n.op_type == "Gemm":
            assert attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if n.op_type in ("Reshape", "Slice"):
            assert all(i in consts for i in n.input[1:])
        if n.op_type == "Gather":
            assert n.input[1] in consts or n.input[1] in ("input_ids", "position_ids")  # int32 graph inputs
