"""Per-layer state descriptors (runtime contract 3): the manifest says what each decoder layer carries,
and the backends allocate and step only from that.

Tier 1: the contract (round trip, refusals), hand-made graphs: a hybrid batched graph with a fixed
running-sum state and a GroupQueryAttention KV layer, a static graph whose logits sum what its KV holds.
Tier 2: a built tiny-qwen artifact whose genai_config.json has been made wrong.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeqwen.artifact import (GENAI_KV_NAMES, RUNTIME_CONTRACT_VERSION, STATIC_KV_NAMES, LayerState, RuntimeSpec,
                               StateTensor, StaticGraph, StaticSpec, VisualInput, kv_layer_states, read_manifest,
                               runtime_spec, write_manifest)
from edgeqwen.errors import ArtifactError

BASE = {"backend": "batched", "execution_provider": "cpu", "tokenizer": "tokenizer.json",
        "chat_template": "chat_template.jinja", "family": "qwen3", "thinking": False, "special_tokens": {},
        "context_length": 64, "vocab_size": 32, "eos_token_ids": [0], "logits": "last_position",
        "model_file": "model.onnx", "genai_config": "genai_config.json"}
# the hybrid toy: layer 0 a fixed running-sum state [batch, 4], layer 1 KV [batch, 1, sequence, 16]
HYBRID = (LayerState("fixed", (StateTensor("state.0", "state_out.0", ("batch", 4), "float32"),)),
          LayerState("kv", tuple(StateTensor(f"past.1.{k}", f"present.1.{k}", ("batch", 1, "sequence", 16), "float32")
                                 for k in ("key", "value"))))
V, D = 32, 16


def _spec(**changes) -> RuntimeSpec:
    return RuntimeSpec(**{**BASE, "layers": HYBRID, **changes})


def _raw(**changes) -> dict:
    return json.loads(json.dumps({**_spec().to_dict(), **changes}))


# -- the contract ------------------------------------------------------------------------------------
def test_the_contract_round_trips_layers_through_the_manifest(tmp_path):
    spec = _spec()
    assert spec.version == RUNTIME_CONTRACT_VERSION == 4
    written = spec.to_dict()
    assert written["layers"][0] == {"kind": "fixed", "tensors": [{"input": "state.0", "output": "state_out.0",
                                                                 "shape": ["batch", 4], "dtype": "float32"}]}
    assert RuntimeSpec.from_dict(written) == spec
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.bin").write_bytes(b"x")
    write_manifest(tmp_path / "a", {"runtime": written, "profile": {}})
    back = runtime_spec(read_manifest(tmp_path / "a"))
    assert back == spec and back.layers == HYBRID
    assert back.layers[1].tensors[0].shape == ("batch", 1, "sequence", 16)  # tuples again, not lists
    assert [layer.truncatable for layer in back.layers] == [False, True] and not back.truncatable
    assert _spec(layers=HYBRID[1:]).truncatable


def test_inspect_shows_each_runs_state():
    """`edgeqwen inspect` says what every layer carries, runs of identical layers on one line (a Qwen3.5
    artifact: three fixed-state layers, then one KV layer, repeated)."""
    from edgeqwen.summary import state_lines

    rt = _spec(layers=HYBRID[:1] * 3 + HYBRID[1:] + HYBRID[:1]).to_dict()
    assert state_lines(rt) == [
        "  state, layers 0-2: fixed state, 1 tensor [batch, 4] float32 (its size does not grow; not truncatable)",
        "  state, layer 3: KV cache, 2 tensors [batch, 1, sequence, 16] float32 (rewinds by truncation)",
        "  state, layer 4: fixed state, 1 tensor [batch, 4] float32 (its size does not grow; not truncatable)"]


def test_kv_layer_states_names_the_graphs_tensors():
    genai = kv_layer_states(2, 2, 64, "float16", *GENAI_KV_NAMES)
    assert [(t.input, t.output) for t in genai[1].tensors] == [("past_key_values.1.key", "present.1.key"),
                                                              ("past_key_values.1.value", "present.1.value")]
    assert genai[0].tensors[0].shape == ("batch", 2, "sequence", 64) and genai[0].tensors[0].dtype == "float16"
    static = StaticSpec({"prefill": StaticGraph("p.onnx", 4), "decode": StaticGraph("d.onnx", 1)}, cache_length=16,
                        layers=3, kv_heads=2, head_dim=8, vocab_size=V, mask_value=-1e4).layer_states()
    assert static == kv_layer_states(3, 2, 8, "float32", *STATIC_KV_NAMES, batch=False)
    assert [t.input for t in static[2].tensors] == ["past_key_2", "past_value_2"]
    assert static[0].tensors[1].output == "present_value_0" and static[0].tensors[0].shape == (2, "sequence", 8)
    assert all(layer.kind == "kv" and layer.truncatable for layer in genai + static)


def _tensor(**changes) -> dict:
    return {"input": "state.0", "output": "state_out.0", "shape": ["batch", 4], "dtype": "float32", **changes}


@pytest.mark.parametrize("layers, message", [
    ({"kind": "kv"}, "expected a non-empty list"),
    ([], "expected a non-empty list"),
    (["kv"], "layer 0: expected a table with exactly kind and tensors"),
    ([{"kind": "ssm", "tensors": [_tensor()]}], "layer 0: kind 'ssm' is not one of kv, fixed"),
    ([{"kind": "fixed", "tensors": []}], "tensors must be a non-empty list"),
    ([{"kind": "fixed", "tensors": [_tensor()], "truncatable": True}], "exactly kind and tensors"),
    ([{"kind": "fixed", "tensors": [_tensor(extra=1)]}], "exactly input, output, shape and dtype"),
    ([{"kind": "fixed", "tensors": [_tensor(dtype="bfloat16")]}], "dtype 'bfloat16' is not one of float32, float16"),
    ([{"kind": "fixed", "tensors": [_tensor(shape=["batch", 0])]}], "must list positive ints"),
    ([{"kind": "fixed", "tensors": [_tensor(shape=["batch", True])]}], "must list positive ints"),
    ([{"kind": "fixed", "tensors": [_tensor(shape=["rows", 4])]}], "must list positive ints"),
    ([{"kind": "fixed", "tensors": [_tensor(shape=[4, "batch"])]}], "'batch' other than once at axis 0"),
    ([{"kind": "fixed", "tensors": [_tensor(shape=["batch", "sequence"])]}], "a fixed state cannot have a 'sequence'"),
    ([{"kind": "kv", "tensors": [_tensor()]}], "a kv state needs a 'sequence' axis"),
    ([{"kind": "fixed", "tensors": [_tensor(input="")]}], "non-empty names"),
    ([{"kind": "fixed", "tensors": [_tensor()]}, {"kind": "fixed", "tensors": [_tensor(output="x")]}],
     "tensor name(s) state.0 used more than once"),
])
def test_a_malformed_layers_table_is_refused_in_one_line(layers, message):
    with pytest.raises(ArtifactError) as e:
        RuntimeSpec.from_dict(_raw(layers=layers), "artifact x")
    text = str(e.value)
    assert text.startswith("artifact x: runtime section has a malformed layers table") and message in text, text
    assert "\n" not in text


def test_layers_must_match_the_static_table():
    static = {"graphs": {"prefill": {"file": "p.onnx", "chunk": 4}, "decode": {"file": "d.onnx", "chunk": 1}},
              "cache_length": 16, "layers": 3, "kv_heads": 1, "head_dim": 2, "vocab_size": V, "mask_value": -1e4}
    with pytest.raises(ArtifactError, match="has 2 layers but its static table 3"):
        RuntimeSpec.from_dict(_raw(static=static))


def _v2_artifact(folder: Path) -> Path:
    raw = _raw(version=2)
    del raw["layers"]  # what edgeqwen with contract 2 wrote
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    write_manifest(folder, {"runtime": raw, "profile": {"name": "cpu-fp32"}})
    return folder


def test_a_contract_2_artifact_is_refused_in_one_line(tmp_path):
    from edgeqwen.runtime import load

    folder = _v2_artifact(tmp_path / "old")
    with pytest.raises(ArtifactError) as e:
        load(folder)
    assert str(e.value) == (f"artifact {folder}: runtime section has contract version 2, this edgeqwen reads 3 and 4; "
                            "rebuild the artifact with this edgeqwen")
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"edgeqwen: error: {e.value}"], r.stderr


# -- a hybrid graph on the batched backend ------------------------------------------------------------
def _hybrid_graph(path: Path) -> np.ndarray:
    """input_ids [B, S], attention_mask [B, T] -> logits [B, 1, V].
    Layer 0 (fixed): state [B, 4] -> state * 0.5^S + sum_t E0[id_t] * 0.5^(S-1-t), one decayed running sum.
    Layer 1 (kv): GroupQueryAttention of one head over Eq/Ek/Ev[ids], KV [B, 1, P, 16] shared past/present.
    logits = attention(last position) @ W2 + new state @ W1: both layers' state shows in every logit."""
    rng = np.random.default_rng(7)
    init = lambda name, a: helper.make_tensor(name, TensorProto.FLOAT if a.dtype == np.float32 else TensorProto.INT64,
                                              a.shape, a.flatten().tolist())
    f = lambda shape: rng.normal(size=shape).astype(np.float32)
    inits = [init("E0", f((V, 4))), init("Eq", f((V, D))), init("Ek", f((V, D))), init("Ev", f((V, D))),
             init("W1", f((4, V))), init("W2", f((D, V))), init("half", np.array(0.5, np.float32)),
             init("one_f", np.array([1.0], np.float32)), init("zero_i", np.array(0, np.int64)),
             init("one_i", np.array(1, np.int64)), init("ones", np.array([1], np.int64)),
             init("axis1", np.array([1], np.int64)), init("axes02", np.array([0, 2], np.int64)),
             init("minus1", np.array([-1], np.int64)), init("big", np.array([1 << 30], np.int64))]
    n = helper.make_node
    nodes = [
        n("Gather", ["E0", "input_ids"], ["x0"]),  # [B, S, 4]
        n("Shape", ["input_ids"], ["s1"], start=1, end=2), n("Squeeze", ["s1"], ["s"]),
        n("Range", ["zero_i", "s", "one_i"], ["t"]), n("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        n("Cast", ["s1"], ["sf"], to=TensorProto.FLOAT), n("Sub", ["sf", "one_f"], ["last_t"]),
        n("Sub", ["last_t", "tf"], ["age"]), n("Pow", ["half", "age"], ["w"]),  # [S]: 0.5^(S-1-t)
        n("Unsqueeze", ["w", "axes02"], ["w3"]), n("Mul", ["x0", "w3"], ["xw"]),
        n("ReduceSum", ["xw", "axis1"], ["contrib"], keepdims=0),  # [B, 4]
        n("Pow", ["half", "sf"], ["decay"]), n("Mul", ["state.0", "decay"], ["kept"]),
        n("Add", ["kept", "contrib"], ["state_out.0"]),
        n("Gather", ["Eq", "input_ids"], ["q"]), n("Gather", ["Ek", "input_ids"], ["k"]),
        n("Gather", ["Ev", "input_ids"], ["v"]),
        n("ReduceSum", ["attention_mask", "ones"], ["total"], keepdims=0), n("Sub", ["total", "ones"], ["sl"]),
        n("Cast", ["sl"], ["seqlens"], to=TensorProto.INT32), n("Shape", ["attention_mask"], ["ms"]),
        n("Gather", ["ms", "one_i"], ["width"], axis=0), n("Cast", ["width"], ["width32"], to=TensorProto.INT32),
        n("GroupQueryAttention", ["q", "k", "v", "past.1.key", "past.1.value", "seqlens", "width32"],
          ["attn", "present.1.key", "present.1.value"], domain="com.microsoft", num_heads=1, kv_num_heads=1,
          scale=0.25),
        n("Slice", ["attn", "minus1", "big", "axis1"], ["attn_last"]),  # [B, 1, 16]
        n("Unsqueeze", ["state_out.0", "axis1"], ["state3"]),
        n("MatMul", ["attn_last", "W2"], ["l_kv"]), n("MatMul", ["state3", "W1"], ["l_fixed"]),
        n("Add", ["l_kv", "l_fixed"], ["logits"]),
    ]
    kv = ["B", 1, "P", D]
    graph = helper.make_graph(nodes, "hybrid", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]),
        helper.make_tensor_value_info("state.0", TensorProto.FLOAT, ["B", 4]),
        helper.make_tensor_value_info("past.1.key", TensorProto.FLOAT, kv),
        helper.make_tensor_value_info("past.1.value", TensorProto.FLOAT, kv),
    ], [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 1, V]),
        helper.make_tensor_value_info("state_out.0", TensorProto.FLOAT, ["B", 4]),
        helper.make_tensor_value_info("present.1.key", TensorProto.FLOAT, kv),
        helper.make_tensor_value_info("present.1.value", TensorProto.FLOAT, kv),
    ], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save_model(model, str(path))
    return onnx.numpy_helper.to_array(inits[0])  # E0 [V, 4]: layer 0's input per token


@pytest.fixture
def hybrid(tmp_path):
    """A batched backend over the hybrid graph (no genai_config.json exists: nothing may read it)."""
    from edgeqwen.runtime.backends.batched import BatchedBackend

    e0 = _hybrid_graph(tmp_path / "model.onnx")
    backend = BatchedBackend(tmp_path, _spec(), threads=1)
    backend.e0 = e0
    return backend


def _fixed_reference(ids: list[int], e0: np.ndarray) -> np.ndarray:
    """Layer 0's state after ``ids`` in float64: sum_t E0[id_t] * 0.5^(n-1-t)."""
    return sum(e0[t].astype(np.float64) * 0.5 ** (len(ids) - 1 - j) for j, t in enumerate(ids))


def test_an_idle_row_keeps_its_state_and_a_full_row_is_no_overflow(hybrid, monkeypatch):
    from edgeqwen.runtime.backends import NotTruncatable

    b = hybrid
    a, idle = b.new_state(8), b.new_state(8)
    idle.append([3, 1, 4, 1, 5])
    a.append([9, 2])
    before = {name: buf[idle.row].copy() for name, buf in b.cache.items()}
    runs = []  # (rows in the run, rows whose state it advanced)
    step = b._step
    monkeypatch.setattr(b, "_step", lambda lo, hi, tokens, totals, active=None: runs.append(
        (hi - lo, None if active is None else int(active.sum()))) or step(lo, hi, tokens, totals, active))
    for t in (6, 5, 3):  # `a` steps three times with `idle` in the run, masked
        a.append([t])
    assert runs == [(2, 1)] * 3
    np.testing.assert_array_equal(b.cache["state.0"][idle.row], before["state.0"])  # fixed: bit for bit
    for name in ("past.1.key", "past.1.value"):  # kv: every position the row holds
        np.testing.assert_array_equal(b.cache[name][idle.row][:, :5], before[name][:, :5])
    np.testing.assert_allclose(b.cache["state.0"][a.row], _fixed_reference([9, 2, 6, 5, 3], b.e0), rtol=1e-6)
    alone = b.teacher_forced_logits([3, 1, 4, 1, 5, 8], 5)
    np.testing.assert_allclose(idle.append([8]), alone[-1], rtol=1e-6, atol=1e-6)
    # a fixed state cannot forget tokens: rewind refuses (a no-op where nothing is cut)
    assert not idle.truncatable
    idle.rewind(len(idle.tokens))
    with pytest.raises(NotTruncatable, match="fixed-size layers"):
        idle.rewind(2)
    idle.close()
    # a row that fills the whole context has no free position for a dummy: it must still not overflow
    full = b.new_state(b.context_length)
    full.append(list(np.arange(b.context_length) % V))
    kept = {name: buf[full.row].copy() for name, buf in b.cache.items()}
    a.append([7])
    for name, buf in b.cache.items():
        np.testing.assert_array_equal(buf[full.row], kept[name])
    full.close()
    a.close()
    assert b.rows == []


def test_rows_joining_idling_and_leaving_compute_what_they_compute_alone(hybrid):
    b = hybrid
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, V, size=int(k)).tolist() for k in rng.integers(12, 40, size=6)]
    prompts = [int(p) for p in rng.integers(1, 9, size=6)]
    alone = [b.teacher_forced_logits(s, p) for s, p in zip(seqs, prompts)]
    b._regrow(2, 8)  # tiny buffers: slots and capacity grow while fixed and kv rows are live
    steps0, rows0 = b.steps, b.rows_stepped
    together: list = [None] * len(seqs)
    start = threading.Barrier(len(seqs))

    def work(i: int) -> None:
        start.wait()
        together[i] = b.teacher_forced_logits(seqs[i], prompts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(seqs))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for x, y in zip(together, alone):  # one GEMM blocking for all rows or one row: float32 rounding only
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # rows shared runs, and rows were idle in some (sequences of different lengths finish apart)
    assert b.steps > steps0 and (b.rows_stepped - rows0) / (b.steps - steps0) > 1.2
    assert b.rows == []


def test_snapshots_restore_a_fixed_state_exactly(hybrid):
    """A light snapshot (fixed rows only) brings its own sequence back to an earlier position; a full one
    (fixed + the KV positions) moves the sequence into another row; both then compute what a fresh
    sequence computes for the same tokens, and a light snapshot refuses a state it is no prefix of."""
    b = hybrid
    ids, tail, other = [3, 1, 4, 1, 5, 9, 2], [6, 5, 3], [7, 7]
    fresh = b.teacher_forced_logits(ids + tail, len(ids))
    s = b.new_state(16)
    s.append(ids)
    light, full = s.snapshot(kv=False), s.snapshot()
    assert light.kv is None and light.nbytes == 4 * 4 and full.nbytes == 4 * 4 + 2 * len(ids) * D * 4
    s.append(other)  # the sequence moves on with other tokens
    s.restore(light)
    assert s.tokens == ids and not s.truncatable
    again = [s.append([t]) for t in tail]
    np.testing.assert_allclose(np.stack(again), fresh[1:], rtol=1e-6, atol=1e-6)
    moved = b.new_state(16)
    moved.append([8, 8, 8])  # whatever it held is replaced
    moved.restore(full)
    np.testing.assert_allclose(np.stack([moved.append([t]) for t in tail]), fresh[1:], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="prefix"):
        b.new_state(16).restore(light)  # an empty state does not hold those tokens
    for st in (s, moved):
        st.close()


def test_the_prefix_cache_feeds_only_what_is_new(hybrid):
    """A parked sequence restored for a prompt that extends it (a chat's next turn) feeds only the new
    tokens; one whose history differs restarts from its last turn boundary (a light snapshot taken where
    its prompt ended), not from zero; the logits are a fresh run's either way."""
    from edgeqwen.runtime.prefix_cache import MIN_REUSE, PrefixCache

    b = hybrid
    rng = np.random.default_rng(3)
    prompt, answer, turn = (rng.integers(0, V, size=k).tolist() for k in (20, 8, 6))
    cache = PrefixCache(1 << 20)
    t = cache.take(b, prompt, 64)
    assert t.keep == 0
    t.state.append(prompt)
    marks = [t.state.snapshot(kv=False)]  # the turn boundary, as the engine takes it
    for a in answer:
        t.state.append([a])
    cache.park(t.state, marks)
    assert t.state.row is None and cache.stats()["entries"] == 1
    # the history resent as generated, then a new message: only the message is fed
    nxt = prompt + answer + turn
    t2 = cache.take(b, nxt, 64)
    assert t2.keep == len(prompt) + len(answer) and t2.state.tokens == prompt + answer
    np.testing.assert_allclose(t2.state.append(turn), b.teacher_forced_logits(nxt, len(nxt))[0], rtol=1e-6, atol=1e-6)
    cache.park(t2.state, t2.marks)
    # the answer came back changed: back to the boundary after the first prompt
    edited = prompt + [0] * len(answer) + turn
    t3 = cache.take(b, edited, 64)
    assert t3.keep == len(prompt) >= MIN_REUSE
    np.testing.assert_allclose(t3.state.append(edited[t3.keep:]), b.teacher_forced_logits(edited, len(edited))[0],
                               rtol=1e-6, atol=1e-6)
    t3.state.close()
    assert cache.stats()["hits"] == 2 and b.rows == []


def test_the_graph_and_the_descriptors_must_agree(tmp_path):
    from edgeqwen.runtime.backends.batched import BatchedBackend

    _hybrid_graph(tmp_path / "model.onnx")
    wrong_dtype = (LayerState("fixed", (StateTensor("state.0", "state_out.0", ("batch", 4), "float16"),)), HYBRID[1])
    with pytest.raises(ArtifactError, match="state tensor state.0 is float16, but the graph takes tensor.float."):
        BatchedBackend(tmp_path, _spec(layers=wrong_dtype), threads=1)
    missing = (LayerState("fixed", (StateTensor("state.9", "state_out.9", ("batch", 4), "float32"),)), HYBRID[1])
    with pytest.raises(ArtifactError, match="state tensor state.9 .output state_out.9. is not in the graph"):
        BatchedBackend(tmp_path, _spec(layers=missing), threads=1)


def test_the_genai_and_static_backends_refuse_fixed_layers(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from edgeqwen.runtime.backends.genai import GenaiBackend
    from edgeqwen.runtime.backends.static import StaticBackend

    with pytest.raises(ArtifactError, match="onnxruntime-genai's backend here handles KV layers only"):
        GenaiBackend(tmp_path, _spec(), threads=1)
    static = StaticSpec({"prefill": StaticGraph("p.onnx", 4), "decode": StaticGraph("d.onnx", 1)}, cache_length=16,
                        layers=2, kv_heads=1, head_dim=16, vocab_size=V, mask_value=-1e4)
    with pytest.raises(ArtifactError, match="the static backend handles KV layers only"):
        StaticBackend(tmp_path, _spec(static=static), threads=1)


# -- a static graph driven from the descriptors -------------------------------------------------------
def _static_graph(path: Path, chunk: int, cache: int) -> None:
    """The static calling convention (edgeqwen/compiler/static/decoder.py) with one KV layer [1, S, 2]:
    present_key_0 [1, C, 2] holds each chunk id, present_value_0 twice it; logits [1, 3] = (ids of the
    visible cache slots, read back from both tensors, + the chunk's unpadded ids) * [1, 2, 3]. A KV write
    in the wrong slot, or a slot the mask should hide, changes the sum."""
    c, s = chunk, cache
    n = helper.make_node
    init = lambda name, a, kind: helper.make_tensor(name, kind, a.shape, a.flatten().tolist())
    inits = [init("scale", np.array([[1.0, 2.0, 3.0]], np.float32), TensorProto.FLOAT),
             init("two", np.array(2.0, np.float32), TensorProto.FLOAT),
             init("zero", np.array(0.0, np.float32), TensorProto.FLOAT),
             init("kv_shape", np.array([1, c, 1], np.int64), TensorProto.INT64),
             init("tile", np.array([1, 1, 2], np.int64), TensorProto.INT64),
             init("last", np.array([c - 1], np.int64), TensorProto.INT64),
             init("end", np.array([c], np.int64), TensorProto.INT64),
             init("zero_i", np.array([0], np.int64), TensorProto.INT64),
             init("s_i", np.array([s], np.int64), TensorProto.INT64),
             init("sc_i", np.array([s + c], np.int64), TensorProto.INT64),
             init("ax1", np.array([1], np.int64), TensorProto.INT64)]
    nodes = [
        n("Cast", ["input_ids"], ["idf"], to=TensorProto.FLOAT),
        n("Reshape", ["idf", "kv_shape"], ["id3"]), n("Tile", ["id3", "tile"], ["present_key_0"]),
        n("Mul", ["present_key_0", "two"], ["present_value_0"]),
        n("Slice", ["attention_mask", "last", "end"], ["row"]),  # [1, S + C]: what the newest token sees
        n("Equal", ["row", "zero"], ["seen"]), n("Cast", ["seen"], ["seenf"], to=TensorProto.FLOAT),
        n("Slice", ["seenf", "zero_i", "s_i", "ax1"], ["seen_cache"]),  # [1, S]
        n("Slice", ["seenf", "s_i", "sc_i", "ax1"], ["seen_chunk"]),  # [1, C]
        n("Add", ["past_key_0", "past_value_0"], ["kv"]),  # [1, S, 2]: 3 id per entry
        n("ReduceSum", ["kv", "two_axes"], ["per_slot"], keepdims=0),  # [S]: 6 id
        n("Mul", ["per_slot", "seen_cache"], ["cached"]), n("ReduceSum", ["cached"], ["cache_sum"], keepdims=0),
        n("Reshape", ["idf", "row_shape"], ["id_row"]), n("Mul", ["id_row", "seen_chunk"], ["fresh"]),
        n("ReduceSum", ["fresh"], ["chunk_sum"], keepdims=0),
        n("Add", ["cache_sum", "chunk_sum"], ["total"]), n("Mul", ["scale", "total"], ["logits"]),
    ]
    inits += [init("two_axes", np.array([0, 2], np.int64), TensorProto.INT64),
              init("row_shape", np.array([1, c], np.int64), TensorProto.INT64)]
    f = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "static", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT32, [c]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT32, [c]),
        f("attention_mask", [c, s + c]), f("past_key_0", [1, s, 2]), f("past_value_0", [1, s, 2]),
    ], [f("logits", [1, 3]), f("present_key_0", [1, c, 2]), f("present_value_0", [1, c, 2])], initializer=inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_static_backend_keeps_kv_where_the_descriptors_say(tmp_path):
    """Cache slot j holds id_j twice in the key and 2 id_j twice in the value: the graph weighs a cached id
    6 and a chunk id 1, so the logits show which ids sit in visible slots."""
    from edgeqwen.runtime.backends.static import StaticBackend

    static = StaticSpec({"prefill": StaticGraph("prefill.onnx", 4), "decode": StaticGraph("decode.onnx", 1)},
                        cache_length=16, layers=1, kv_heads=1, head_dim=2, vocab_size=3, mask_value=-1e4)
    _static_graph(tmp_path / "prefill.onnx", 4, 16)
    _static_graph(tmp_path / "decode.onnx", 1, 16)
    backend = StaticBackend(tmp_path, _spec(backend="static", static=static, vocab_size=3, context_length=16,
                                            layers=static.layer_states(), model_file=None, genai_config=None), 1)
    expect = lambda cached, fresh: 6 * sum(cached) + sum(fresh)
    state = backend.new_state(16)
    np.testing.assert_allclose(state.append([1, 2, 3, 4, 5, 6]), expect([1, 2, 3, 4], [5, 6]) * np.arange(1, 4))
    assert state.truncatable
    np.testing.assert_allclose(state.append([7]), expect([1, 2, 3, 4, 5, 6], [7]) * np.arange(1, 4))
    state.rewind(2)  # slots 2.. are masked out and rewritten
    np.testing.assert_allclose(state.append([9, 10]), expect([1, 2], [9, 10]) * np.arange(1, 4))
    np.testing.assert_allclose(state.append([11]), expect([1, 2, 9, 10], [11]) * np.arange(1, 4))
    assert list(state.buffers) == ["past_key_0", "past_value_0"] and state.buffers["past_key_0"].shape == (1, 16, 2)


# -- a built artifact -----------------------------------------------------------------------------------
def test_built_artifacts_describe_their_layers(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    manifest = read_manifest(folder)
    spec = runtime_spec(manifest)
    c = json.loads((folder / "config.json").read_text())
    head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    assert spec.layers == kv_layer_states(c["num_hidden_layers"], c["num_key_value_heads"], head, "float32",
                                          *GENAI_KV_NAMES)
    assert manifest["runtime"]["version"] == RUNTIME_CONTRACT_VERSION and manifest["runtime"]["layers"][0]["kind"] == "kv"
    assert spec.positions == "mask" and spec.visual_input is None  # GroupQueryAttention's own positions, no vision


@pytest.mark.parametrize("change, name", [({"positions": "mrope"}, "position_ids"),
                                          ({"visual_input": VisualInput("visual_embeds", 64, "float32", (7,))},
                                           "visual_embeds")])
def test_graph_inputs_the_runtime_section_names_must_be_in_the_graph(artifacts, change, name):
    """A runtime section that promises an input the graph lacks is refused in one line when the backend
    loads, not at the first token."""
    from dataclasses import replace

    from edgeqwen.runtime.backends.batched import BatchedBackend

    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    spec = replace(runtime_spec(read_manifest(folder)), **change)
    with pytest.raises(ArtifactError) as e:
        BatchedBackend(folder, spec, threads=1)
    assert str(e.value) == (f"artifact {folder}: the runtime section names graph input {name}, which the graph does "
                            "not have; rebuild the artifact")


def test_the_batched_backend_does_not_read_genai_config(artifacts, tmp_path):
    from edgeqwen.runtime.backends.batched import BatchedBackend
    from edgeqwen.runtime.engine import Engine

    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    cfg = json.loads((broken / "genai_config.json").read_text())
    cfg["model"]["decoder"].update(num_hidden_layers=97, num_key_value_heads=5, head_size=3)
    (broken / "genai_config.json").write_text(json.dumps(cfg))
    spec = runtime_spec(read_manifest(broken))  # the class itself: the manifest's sha256 check would refuse it
    ids = [5, 17, 300, 42, 8]
    want = Engine(folder, backend="batched").backend.greedy(ids, 8)
    assert BatchedBackend(broken, spec, threads=2).greedy(ids, 8) == want
    (broken / "genai_config.json").unlink()  # not even there
    assert BatchedBackend(broken, spec, threads=2).greedy(ids, 8) == want


@pytest.mark.parametrize("snapshots", [True, False])
def test_a_session_whose_state_cannot_rewind(artifacts, monkeypatch, snapshots):
    """A state that cannot be cut back: with snapshots, each turn goes back to the snapshot taken where the
    previous prompt ended (the template re-renders the answer: the history parts inside it) and feeds the
    rest, in the same state; without, a fresh state and the whole prompt again. Either way the tokens are
    a fresh run's (rewind would raise)."""
    from edgeqwen.runtime.backends.batched import BatchedState
    from edgeqwen.runtime.engine import Engine

    engine = Engine(artifacts("tiny-qwen3", "cpu-fp32").folder, backend="batched")
    monkeypatch.setattr(engine.backend, "truncatable", False)
    monkeypatch.setattr(BatchedState, "snapshots", snapshots)
    made = []
    new_state = engine.backend.new_state
    monkeypatch.setattr(engine.backend, "new_state", lambda capacity: made.append(capacity) or new_state(capacity))
    session = engine.session()
    reused = []
    for text in ("Hello there", "And then?", "Why?"):
        turn = session.send(text, max_new_tokens=6, temperature=0).finish()
        assert not session.state.truncatable
        reused.append(turn.metrics.cached_tokens)
        fresh = engine.chat(session.messages[:-1], max_new_tokens=6, temperature=0).finish()
        assert turn.token_ids == fresh.token_ids
    session.close()
    assert engine.backend.rows == []
    if snapshots:  # the three fresh runs and the session's one state
        assert len(made) == 3 + 1 and reused[0] == 0 and all(r > 10 for r in reused[1:]), (made, reused)
        assert len(session.marks) == 0  # closed
    else:
        assert len(made) >= 3 + 2 and 0 in reused[1:]  # at least one turn started over


@pytest.mark.parametrize("elem, expect", [(TensorProto.FLOAT16, "float16"), (TensorProto.FLOAT, "float32"),
                                          (TensorProto.BFLOAT16, None)])
def test_the_genai_flow_reads_the_kv_dtype_from_the_graph(tmp_path, elem, expect):
    """fp16 KV on DirectML (and wherever the builder picks it) comes from the graph's own input type."""
    from edgeqwen.compiler.flows.genai import _input_dtype
    from edgeqwen.errors import ProfileError

    kv = helper.make_tensor_value_info("past_key_values.0.key", elem, ["batch", 2, "past", 64])
    out = helper.make_tensor_value_info("y", elem, ["batch", 2, "past", 64])
    graph = helper.make_graph([helper.make_node("Identity", ["past_key_values.0.key"], ["y"])], "g", [kv], [out])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "model.onnx"))
    if expect is None:
        with pytest.raises(ProfileError, match="is BFLOAT16; the runtime contract takes float32 or float16 KV"):
            _input_dtype(tmp_path / "model.onnx", "past_key_values.0.key")
    else:
        assert _input_dtype(tmp_path / "model.onnx", "past_key_values.0.key") == expect
