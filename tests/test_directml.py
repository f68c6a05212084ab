"""directml-fp16 / directml-int4: what can be proven without DirectML hardware.

Every node has a DirectML kernel in onnxruntime's own list, genai_config.json names the dml
provider and loads, and the same graph on the CPU provider is validated against transformers
(inside each build). Nothing here runs on a GPU.
"""

import json
import warnings

import onnx
import pytest
from onnx import TensorProto, helper

from edgeqwen.compiler.package_steps.dml_operator_check import check_model, load_kernels
from edgeqwen.runtime import load


def _graph(op: str, domain: str = "", opset: int = 17, dtype=TensorProto.FLOAT16, **attrs) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", dtype, [2, 4])
    y = helper.make_tensor_value_info("y", dtype, [2, 4])
    node = helper.make_node(op, ["x"], ["y"], domain=domain, **attrs)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=imports)


def test_kernel_list_is_onnxruntimes():
    kernels, meta = load_kernels()
    assert "microsoft/onnxruntime@" in meta["source"] and "OperatorKernels.md" in meta["source"]
    # a few rows every LLM graph needs, with the types the list gives them
    for domain, op in (("ai.onnx", "MatMul"), ("ai.onnx", "Gather"), ("com.microsoft", "GroupQueryAttention"),
                       ("com.microsoft", "MatMulNBits"), ("com.microsoft", "RotaryEmbedding")):
        assert (domain, op) in kernels, (domain, op)
    assert any("float16" in r[2] for r in kernels[("ai.onnx", "MatMul")])


def test_check_accepts_and_refuses_by_op_version_and_type():
    kernels, _ = load_kernels()
    assert check_model(_graph("Sigmoid"), kernels)["missing"] == {}
    # an op DirectML has no kernel for at all
    bad = check_model(_graph("GatherBlockQuantized", domain="com.microsoft"), kernels)
    assert bad["missing"] == {"com.microsoft:GatherBlockQuantized(v1)": 1}
    # a known op with an input type its kernel does not take (Sigmoid on int64)
    typed = check_model(_graph("Sigmoid", dtype=TensorProto.INT64), kernels)
    assert typed["unsupported_types"] == {"ai.onnx:Sigmoid(int64)": 1}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["directml-fp16", "directml-int4"])
@pytest.mark.parametrize("name", ["tiny-qwen2.5", "tiny-qwen3"])
def test_directml_artifact(artifacts, name, target):
    result = artifacts(name, target)
    m, folder = result.manifest, result.folder
    v = m["validation"]
    assert v["passed"], v["failures"]
    assert v["execution_provider"] == "cpu"  # the DML graph, run on the CPU provider here
    check = m["package_steps"]["dml_operator_check"]
    assert check["missing"] == {} and check["unsupported_types"] == {} and check["nodes_type_checked"] > 0
    cfg = json.loads((folder / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["session_options"]["provider_options"] == [{"dml": {}}]
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    kv = next(i for i in model.graph.input if i.name.startswith("past_key_values"))
    assert kv.type.tensor_type.elem_type == TensorProto.FLOAT16  # fp16 activations and cache
    if target == "directml-int4":
        assert any(w["op"] == "MatMulNBits" and w["bits"] == 4 for w in m["quantization"]["weight_ops"])
    if name == "tiny-qwen3":  # q/k norm stays a SimplifiedLayerNormalization before rotary and GQA
        producers = {o: n for n in model.graph.node for o in n.output}
        for gqa in (n for n in model.graph.node if n.op_type == "GroupQueryAttention"):
            assert {a.name: helper.get_attribute_value(a) for a in gqa.attribute}["do_rotary"] == 0
            for q_or_k in gqa.input[:2]:
                rotary = producers[q_or_k]
                assert rotary.op_type == "RotaryEmbedding"
                norm = producers[rotary.input[0]]  # per-head norm: Reshape -> norm -> Reshape back
                while norm.op_type == "Reshape":
                    norm = producers[norm.input[0]]
                assert norm.op_type == "SimplifiedLayerNormalization"


@pytest.mark.slow
def test_directml_artifact_runs_on_cpu_with_a_warning(artifacts):
    folder = artifacts("tiny-qwen3", "directml-fp16").folder
    with pytest.warns(RuntimeWarning, match="built for the 'dml' execution provider"):
        engine = load(folder)
    assert engine.provider == "cpu"
    assert len(engine.generate("Hello", max_new_tokens=5, temperature=0).token_ids) == 5
    with pytest.raises(RuntimeError, match="'dml' is not available"):
        load(folder, provider="dml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(folder, provider="cpu").provider == "cpu"  # explicit: no warning


def test_regeneration_tool_reads_operatorkernels_format():
    """tools/dml_kernel_list.py on rows in OperatorKernels.md's format gives the committed file's lines."""
    import importlib.util
    from pathlib import Path

    tool = Path(__file__).parents[1] / "tools" / "dml_kernel_list.py"
    spec = importlib.util.spec_from_file_location("dml_kernel_list", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = "\n".join([
        "## Operators implemented by CUDAExecutionProvider", "|Gather|x|13+|**T** = tensor(float)|",
        '<a name="dmlexecutionprovider"/>', "", "## Operators implemented by DmlExecutionProvider", "",
        "| Op Name | Parameters | OpSet Version | Types Supported |",
        "|---------|------------|---------------|-----------------|",
        "|**Operator Domain:** *ai.onnx*||||",
        "|Sigmoid|*in* X:**T**<br> *out* Y:**T**|13+|**T** = tensor(float), tensor(float16)|",
        "|||6+|**T** = tensor(float), tensor(float16)|",
        "| |", "| |",
        "|**Operator Domain:** *com.microsoft*||||",
        "|MatMulNBits|*in* A:**T1**<br> *in* B:**T2**|1+|**T1** = tensor(float), tensor(float16)<br/> **T2** = tensor(uint8)|",
    ])
    rows = ["\t".join(r) for r in mod.dml_rows(md)]
    assert rows == ["ai.onnx\tSigmoid\t13+\tfloat,float16", "ai.onnx\tSigmoid\t6+\tfloat,float16",
                    "com.microsoft\tMatMulNBits\t1+\tfloat,float16,uint8"]
    committed = (Path(__file__).parents[1] / "edgeqwen" / "compiler" / "data" / "dml_kernels.tsv").read_text().splitlines()
    assert set(rows) <= set(committed)
