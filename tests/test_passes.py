"""Graph passes on hand-made ONNX graphs, executed by onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeqwen.compiler.graph_report import quantization_report
from edgeqwen.compiler.passes import PassContext, get_pass

V, H = 96, 64
GENAI = {"model": {"decoder": {"outputs": {"logits": "logits", "present_key_names": "present.%d.key"}}}}


def tied_lm(rng) -> onnx.ModelProto:
    """input_ids [B,S] -> Gather(E) -> hidden [B,S,H]; hidden_in [B,S,H] -> MatMul(E^T) -> logits [B,S,V]."""
    e = rng.standard_normal((V, H)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["embeds"], name="/model/embed_tokens/Gather"),
        helper.make_node("MatMul", ["hidden_in", "lm_head.MatMul.weight"], ["logits"], name="/lm_head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"]),
         helper.make_tensor_value_info("hidden_in", TensorProto.FLOAT, ["B", "S", H])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", V]),
         helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["B", "S", H])],
        [numpy_helper.from_array(e, "model.embed_tokens.weight"), numpy_helper.from_array(e.T.copy(), "lm_head.MatMul.weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def run(model, ids, hidden):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits", "embeds"], {"input_ids": ids, "hidden_in": hidden})


def quantize_lm_head(model, bits):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=bits)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True, algo_config=config)
    q.process()
    return q.model.model


@pytest.mark.parametrize("bits", [4, 8])
def test_tied_embedding_reads_quantised_lm_head(bits):
    rng = np.random.default_rng(0)
    model = quantize_lm_head(tied_lm(rng), bits)
    assert [n.op_type for n in model.graph.node if "lm_head" in n.name] == ["MatMulNBits"]
    record = get_pass("share_tied_embeddings")(model, PassContext(tied_embeddings=True, genai_config=GENAI))
    assert record["applied"] and record["bytes_saved"] == V * H * 4
    assert "model.embed_tokens.weight" not in {t.name for t in model.graph.initializer}

    # The lm_head applied to the identity gives its dequantised weight W~ [H, V]; the shared
    # embedding of every id must be exactly the matching column of W~ (same bytes, same scales).
    ids = np.arange(V, dtype=np.int64)[None, :]
    eye = np.eye(H, dtype=np.float32)[None]
    logits, embeds = run(model, ids, eye)
    np.testing.assert_allclose(embeds[0], logits[0].T, rtol=0, atol=1e-6)
    report = quantization_report(model)
    assert report["embedding"] == {"op": "GatherBlockQuantized", "bits": bits, "shared_with_lm_head": True,
                                   "weight": report["embedding"]["weight"]}


def test_tied_float_embedding_becomes_transpose_of_lm_head():
    rng = np.random.default_rng(1)
    model = tied_lm(rng)
    ids = rng.integers(0, V, (2, 5)).astype(np.int64)
    hidden = rng.standard_normal((2, 5, H)).astype(np.float32)
    before = run(model, ids, hidden)
    get_pass("share_tied_embeddings")(model, PassContext(tied_embeddings=True, genai_config=GENAI))
    after = run(model, ids, hidden)
    assert len(model.graph.initializer) == 1
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_untied_checkpoint_is_left_alone():
    model = tied_lm(np.random.default_rng(2))
    record = get_pass("share_tied_embeddings")(model, PassContext(tied_embeddings=False, genai_config=GENAI))
    assert record["applied"] is False
    assert len(model.graph.initializer) == 2


def test_restore_io_names_undoes_quantiser_renaming():
    model = tied_lm(np.random.default_rng(3))
    model.graph.node[1].output[0] = "logits_Q4"
    model.graph.output[0].name = "logits_Q4"
    record = get_pass("restore_io_names")(model, PassContext(tied_embeddings=True, genai_config=GENAI))
    assert record["renamed"] == {"logits_Q4": "logits"}
    assert model.graph.output[0].name == "logits" and model.graph.node[1].output[0] == "logits"


def test_restore_io_names_fails_loudly_when_logits_are_gone():
    model = tied_lm(np.random.default_rng(4))
    model.graph.output[0].name = "something_else"
    with pytest.raises(RuntimeError, match="logits"):
        get_pass("restore_io_names")(model, PassContext(tied_embeddings=True, genai_config=GENAI))
