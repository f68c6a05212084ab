"""The streaming exporter (edgeqwen.compiler.export) against Olive's passes, and its memory bound.

Olive's ModelBuilder + its weight passes (OnnxBlockWiseRtnQuantization, OnnxKQuantQuantization) and our
graph passes are the reference: the streaming exporter must write a graph that computes the same logits
(measured: bit for bit, on every genai profile and fixture family tried) with memory that does not grow
with the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeqwen.compiler.pipeline import build
from edgeqwen.targets import targets_dir

IDS = [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 576, 6556, 3974, 13876]
GENAI_PROFILES = ["cpu-fp32", "cpu-int4-fast", "cpu-int8", "android-cpu-int4-fast", "directml-int4", "directml-fp16"]


def _graph_summary(folder: Path):
    import onnx

    path = folder / "model.onnx"
    if not path.is_file():  # ORT-format artifacts (Android): compared by their logits only
        return None, None
    m = onnx.load(str(path), load_external_data=False)
    # Olive: Constant nodes, we: initializers; our rotary tables are a constant subgraph, Olive's initializers
    ops = Counter(n.op_type for n in m.graph.node if n.op_type != "Constant" and not n.name.startswith("/model/rotary/"))
    io = sorted((v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output])
    return ops, io


def _logits(folder: Path) -> np.ndarray:
    from edgeqwen.runtime.engine import Engine

    with warnings.catch_warnings():  # DirectML artifacts run on the CPU provider here
        warnings.simplefilter("ignore", RuntimeWarning)
        return Engine(folder, verify="size").backend.teacher_forced_logits(IDS, 4)


def _compare_exporters(checkpoints, tmp_path: Path, name: str, target: str) -> None:
    folders = {ex: build(str(checkpoints(name)), target, tmp_path / ex, quiet=True, validate=False,
                         exporter=ex).folder for ex in ("olive", "streaming")}
    (ops_o, io_o), (ops_s, io_s) = (_graph_summary(folders[ex]) for ex in ("olive", "streaming"))
    assert io_o == io_s
    if ops_o is not None:
        # an untied quantised embedding: Olive quantises the table along axis 1, we reuse MatMulNBits'
        # block layout (quantize_axis 2), which needs two Reshapes around GatherBlockQuantized
        ops_s["Reshape"] -= 2 * (ops_s["GatherBlockQuantized"] and ops_o["Reshape"] != ops_s["Reshape"])
        assert +ops_o == +ops_s
    a, b = _logits(folders["olive"]), _logits(folders["streaming"])
    assert np.array_equal(a, b), f"max |dlogit| {np.abs(a - b).max():.3g}"  # measured: 0 on every case


@pytest.mark.parametrize("name, target", [("tiny-qwen3-tied", "cpu-int4-fast"),
                                          pytest.param("tiny-qwen2", "cpu-int4-fast", marks=pytest.mark.slow)])
def test_streaming_export_computes_what_olive_does(checkpoints, tmp_path, name, target):
    _compare_exporters(checkpoints, tmp_path, name, target)


@pytest.mark.slow
@pytest.mark.parametrize("target", GENAI_PROFILES)
def test_every_genai_profile_streams_to_olives_graph(checkpoints, tmp_path, target):
    _compare_exporters(checkpoints, tmp_path, "tiny-qwen3-tied", target)


@pytest.mark.slow
@pytest.mark.parametrize("name, target", [("tiny-qwen2.5-yarn", "cpu-fp32"), ("tiny-qwen2", "directml-int4")])
def test_other_families_stream_to_olives_graph(checkpoints, tmp_path, name, target):
    _compare_exporters(checkpoints, tmp_path, name, target)


def test_int4_weights_carry_the_profile_bits_and_block(artifacts):
    import onnx
    from onnx import helper

    result = artifacts("tiny-qwen3", "cpu-int4-fast")  # untied: the embedding takes the RTN pass
    assert result.manifest["quantization"]["export"]["exporter"] == "streaming"
    steps = result.manifest["quantization"]["export"]["steps"]
    assert [s["profile_pass"] for s in steps] == ["ModelBuilder", "OnnxKQuantQuantization",
                                                  "OnnxBlockWiseRtnQuantization"]
    assert "edgeqwen.compiler.export.kquant" in steps[1]["done_by"]
    assert "quantize_matmul_4bits" in steps[2]["done_by"]
    m = onnx.load(str(result.folder / "model.onnx"), load_external_data=False)
    seen = Counter()
    for n in m.graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            head = n.output[0] == "logits"
            # k-quant is asymmetric (zero points); the untied table is RTN, symmetric
            expected = (32 if head else 128, True) if n.op_type == "MatMulNBits" else (64, False)
            assert (a["bits"], a["block_size"], len(n.input) > 3 and bool(n.input[3])) == (4, *expected), n.name
            assert n.op_type != "MatMulNBits" or a["accuracy_level"] == 4
            seen[n.op_type, head] += 1
    assert seen == {("MatMulNBits", True): 1, ("MatMulNBits", False): 10, ("GatherBlockQuantized", False): 1}


def test_unknown_olive_pass_is_refused_with_the_way_out(tmp_path, checkpoints):
    from edgeqwen.errors import ProfileError

    profile = tmp_path / "odd.toml"
    profile.write_text('name = "odd"\ndescription = "x"\ndevice = "cpu"\nexecution_provider = "cpu"\n'
                       'precision = "int4"\nbackend = "genai"\n[[olive_passes]]\ntype = "ModelBuilder"\n'
                       'precision = "fp32"\n[[olive_passes]]\ntype = "OnnxHqqQuantization"\n')
    with pytest.raises(ProfileError, match="--exporter olive"):
        build(str(checkpoints("tiny-qwen2")), str(profile), tmp_path / "out", quiet=True, validate=False)
    assert not (tmp_path / "out").exists()


MIXED = """name = "mixed"
description = "8-bit lm_head and embedding, 4-bit block-32 asymmetric layers"
device = "cpu"
execution_provider = "cpu"
precision = "int4"
backend = "genai"
[[olive_passes]]
type = "ModelBuilder"
precision = "fp32"
extra_options = { prune_lm_head = true }
[[olive_passes]]
type = "OnnxBlockWiseRtnQuantization"
bits = 8
block_size = 64
accuracy_level = 4
nodes_to_include = ["/lm_head/MatMul", "/model/embed_tokens/Gather"]
[[olive_passes]]
type = "OnnxBlockWiseRtnQuantization"
bits = 4
block_size = 32
is_symmetric = false
accuracy_level = 4
[validation]
max_abs_logit_diff = 0.001
min_top1_agreement = 1.0
min_greedy_match = 48
"""


@pytest.mark.parametrize("name", [pytest.param("tiny-qwen3-tied", marks=pytest.mark.slow), "tiny-qwen2"])
def test_per_node_rtn_passes_give_the_lm_head_and_embedding_their_own_bits(checkpoints, tmp_path, name):
    """Olive's way to say "8-bit lm_head and embeddings, 4-bit elsewhere": an RTN pass naming the nodes it
    takes, then one for the rest. The stream writes each role in its pass's format (a tied table once, as
    8-bit blocks both the Gather and the lm_head read), the parity gate passes, and plan's size rule
    counts the same bytes."""
    import json

    from edgeqwen.plan.catalogue import Shape
    from edgeqwen.plan.storage import storage, weight_bytes
    from edgeqwen.targets import load_profile

    profile = tmp_path / "mixed.toml"
    profile.write_text(MIXED)
    r = build(str(checkpoints(name)), str(profile), tmp_path / "out", quiet=True, loss_text=False)
    assert r.manifest["validation"]["passed"], r.manifest["validation"]["failures"]
    ops = {(w["op"], w["bits"], w["block_size"], w["zero_points"]): w["count"]
           for w in r.manifest["quantization"]["weight_ops"]}
    layers = 4 * 2 if name == "tiny-qwen2" else 5 * 2  # fused qkv, o, gate, up, down (Qwen2: qkv + bias)
    assert ops[("MatMulNBits", 8, 64, False)] == 1  # the lm_head
    assert ops[("GatherBlockQuantized", 8, 64, False)] == 1
    assert sum(c for (op, bits, *_), c in ops.items() if op == "MatMulNBits" and bits == 4) >= layers - 2
    config = json.loads((checkpoints(name) / "config.json").read_text())
    actual = sum(v for k, v in r.manifest["quantization"]["initializer_bytes"].items() if k != "int64")
    assert weight_bytes(Shape.from_config(config), storage(load_profile(str(profile))),
                        config["max_position_embeddings"]) == actual


PEAK = """
import dataclasses, sys
from pathlib import Path
from edgeqwen.testmodels.fixtures import FIXTURES, make_checkpoint
from edgeqwen.compiler.pipeline import build
spec = dataclasses.replace(FIXTURES["qwen2.5-0.5b-shape"], layers=int(sys.argv[2]), streamed=True)
ckpt = make_checkpoint(spec.name, Path(sys.argv[1]) / "ckpt", dtype="bfloat16", spec=spec)
# VmHWM of this process only: the checkpoint maker above stays far below the build's peak
build(str(ckpt), sys.argv[3], Path(sys.argv[1]) / "art", quiet=True, validate=False)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024)
"""


def _small_calibration_gptq(folder: Path) -> Path:
    """cpu-int4 as shipped but calibrated on 4 x 128 tokens (what grows with the layer count is the same;
    the calibration states are a constant term: samples x tokens x hidden x 4 bytes)."""
    text = (targets_dir() / "cpu-int4.toml").read_text().replace('name = "cpu-int4"', 'name = "gptq-small"')
    text = text.replace("calibration_samples = 32", "calibration_samples = 4")
    path = folder / "gptq-small.toml"
    path.write_text(text.replace("calibration_tokens = 512", "calibration_tokens = 128"))
    return path


# Peak growth allowed when the 0.5B shape's layer count doubles (each 15M-parameter layer is 60 MB in fp32; a pass
# holding the model adds that per layer and more). Streaming export: measured 585, 576 and 582 MB for 4, 8 and 16
# layers (613-616 / 615 MB in a later run), 615 / 615 MB for the 2 -> 4 layers the test now runs. The GPTQ
# subprocesses run with glibc's mmap threshold fixed at 1 MB: a freed block of 1 MB or more goes back to the system
# at once, so the peak is what the build holds, not where the allocator's free lists happened to stand (with its
# default, the GPTQ peaks of the same run varied by 50 MB from run to run here, and by 73 MB between 2 and 4 layers
# on CI); measured with it (AMD EPYC, 3 runs each) at 4 x 128 windows: 831 / 826 / 827 -> 829 / 830 / 824 MB for 2
# -> 4 layers. The export keeps the default: its many numpy temporaries take a page fault each with the fixed
# threshold (its test 52 s -> 158 s), and its peak is steady without it.
GROWTH_MB = {"cpu-int4-fast": 48, "gptq": 24}
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cpu-int4-fast", "gptq"])
def test_build_memory_does_not_grow_with_the_layer_count(tmp_path, profile):
    """The 0.5B shape with 2 and with 4 layers: the build's peak RSS is the libraries plus one block of
    rows (streaming export), or plus one layer, its Hessians and the calibration states (layer-wise GPTQ,
    the quality-first cpu-int4); a pass holding the model would add 120 MB or more."""
    target = str(_small_calibration_gptq(tmp_path)) if profile == "gptq" else profile
    peaks = {}
    few = 2  # 2 -> 4 (the export's 4 -> 8 was 64 s of the suite's 25 minutes, its peak as flat)
    for layers in (few, 2 * few):
        r = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / f"l{layers}"), str(layers), target],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, **(FIXED_MMAP if profile == "gptq" else {})})
        peaks[layers] = int(r.stdout.split()[-1])
    print(f"peak RSS MB by layer count ({profile}): {peaks}")
    assert peaks[2 * few] - peaks[few] < GROWTH_MB[profile], peaks


@pytest.mark.slow  # a build and its validation in a subprocess (~40 s): the quick tier is near its budget
def test_a_large_models_build_leaves_torch_out_of_the_build_process(artifacts, checkpoints, tmp_path):
    """A model too large for the whole-model reference (its validation's references run apart) takes its
    rotary parameters from transformers in a process of their own, and its validation tokenizes in one:
    the build process never imports torch (~230-315 MB that would stay under the artifact's session, whose
    load is the build's peak), and the graph is byte for byte the one computed in-process."""
    folder = artifacts("tiny-qwen3.5", "cpu-fp32").folder  # in-process: the tiny model fits whole
    code = ("import sys; import edgeqwen.quality.reference as r; r.WHOLE_MODEL_LIMIT_BYTES = 0; "
            "from edgeqwen.compiler.pipeline import build; "
            f"res = build({str(checkpoints('tiny-qwen3.5'))!r}, 'cpu-fp32', {str(tmp_path / 'art')!r}, quiet=True); "
            "print(res.manifest['validation']['passed'], 'torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["True", "False", "False"], r.stdout
    assert (tmp_path / "art" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
