"""The parity check: the artifact against transformers computing with the artifact's own quantised weights,
dequantised back into it.

A correct build then differs only by float summation order: what the compiler must get exactly right on
any checkpoint. What quantisation costs is a separate question, answered against plain fp32.

MatMulNBits with accuracy_level 4 (the fast CPU kernel) rounds its input to int8 per block of K. That
rounding is emulable (round(x / (max|x| / 127)) per block agrees with the kernel to 4e-7 of the output's
range), but an input a float ulp away from a rounding boundary flips one int8 step, and a deep random-
weight network amplifies such flips into O(1) logit differences (the Qwen2.5-0.5B shape: KL 0.04 with
emulation, measured). So parity runs on a twin of the artifact whose MatMulNBits compute in fp32
(accuracy_level 0 for 4-bit weights; 8-bit weights dequantised to an fp32 MatMul when the session loads,
see _dequantized_matmul; the same weight bytes), exact on any checkpoint, and what the int8 activations add
is measured apart, between the artifact and its twin.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from edgeqwen.artifact import MANIFEST_NAME, read_manifest, sha256_file
from edgeqwen.model.tensors import TensorMap
from edgeqwen.quality.graph_weights import ArtifactWeights

INT8_COMPUTE = 4  # MatMulNBits accuracy_level that quantises activations to int8


def exact_compute_twin(folder: Path, manifest: dict[str, Any], out: Path) -> Path | None:
    """``out``: the artifact with every MatMulNBits at accuracy_level 0, other files hard-linked (``out``
    should be on the artifact's file system); None when no node computes in int8 (its own twin)."""
    model_file = manifest["runtime"].get("model_file", "model.onnx")
    patch = _patch_ort if model_file.endswith(".ort") else _patch_onnx
    data = patch(folder / model_file)
    if data is None:
        return None
    out.mkdir(parents=True)
    for f in folder.iterdir():
        if f.name not in (model_file, MANIFEST_NAME):
            _link(f, out / f.name)
    (out / model_file).write_bytes(data)
    # the graph file changes size where 8-bit weights became an fp32 MatMul: the twin's manifest lists it so
    if (folder / MANIFEST_NAME).is_file():
        on_disk = read_manifest(folder)
        on_disk["files"][model_file] = {"sha256": sha256_file(out / model_file), "bytes": len(data)}
        (out / MANIFEST_NAME).write_text(json.dumps(on_disk, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _link(src: Path, dst: Path) -> None:
    """A hard link (onnxruntime refuses external data reached through a symlink out of the model's folder);
    a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _patch_onnx(path: Path) -> bytes | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = False
    nodes = []
    fold = _fold_8bit(model)
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "MatMulNBits" or "accuracy_level" not in attrs or attrs["accuracy_level"].i != INT8_COMPUTE:
            nodes.append(node)
            continue
        changed = True
        if attrs["bits"].i == 8 and fold:
            nodes += _dequantized_matmul(node, {k: onnx.helper.get_attribute_value(v) for k, v in attrs.items()})
        else:
            attrs["accuracy_level"].i = 0
            nodes.append(node)
    if not changed:
        return None
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


# The twin folds 8-bit weights to fp32 only while they fit in this share of MemAvailable (4 bytes a weight:
# the 2B Qwen3.5 shape's are 8 GB); beyond it they stay 8-bit at accuracy_level 0, slow but in bounded memory.
FOLD_SHARE = 0.25


def _fold_8bit(model) -> bool:
    """Whether the twin's 8-bit MatMulNBits can become fp32 MatMuls (FOLD_SHARE of MemAvailable)."""
    from edgeqwen.build_memory import available_memory

    weights = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: x.i for x in node.attribute}
            weights += a["N"] * a["K"] if a.get("bits") == 8 else 0
    return 4 * weights <= FOLD_SHARE * available_memory()


def _dequantized_matmul(node, attrs: dict[str, Any]) -> list:
    """An 8-bit MatMulNBits as DequantizeLinear (blocked along K) + Transpose + MatMul, all on initializers:
    onnxruntime folds the weight to fp32 [K, N] when the session loads, so the twin computes exactly in fp32
    at sgemm speed (onnxruntime 1.32's 8-bit MatMulNBits has no fp32-compute kernel: it dequantizes the whole
    weight on every call, 71 ms per call for 8,192 x 1,024 against 0.5 ms with int8 compute, which made the
    twin of a 0.8B int8 model take hours). Costs 4 bytes per weight in memory while the twin runs."""
    from onnx import TensorProto, helper

    n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
    blocks = -(-k // block)
    x, b, scales = node.input[:3]
    zp = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    p = f"{node.name}/twin"
    shape = lambda name, dims: helper.make_node("Constant", [], [name], value=helper.make_tensor(  # noqa: E731
        name, TensorProto.INT64, [len(dims)], dims))
    out = [shape(f"{p}/qshape", [n, blocks * block]), shape(f"{p}/sshape", [n, blocks]),
           helper.make_node("Reshape", [b, f"{p}/qshape"], [f"{p}/q"]),
           helper.make_node("Reshape", [scales, f"{p}/sshape"], [f"{p}/s"])]
    if zp:
        out.append(helper.make_node("Reshape", [zp, f"{p}/sshape"], [f"{p}/zp"]))
    else:  # symmetric: MatMulNBits' implied zero point 2^(bits - 1)
        out += [helper.make_node("Constant", [], [f"{p}/mid"], value=helper.make_tensor(f"{p}/mid", TensorProto.UINT8,
                                                                                        [1], [128])),
                helper.make_node("Expand", [f"{p}/mid", f"{p}/sshape"], [f"{p}/zp"])]
    out.append(helper.make_node("DequantizeLinear", [f"{p}/q", f"{p}/s", f"{p}/zp"], [f"{p}/w"], axis=1,
                                block_size=block))  # [N, K padded to blocks]
    w = f"{p}/w"
    if blocks * block != k:
        out += [shape(f"{p}/start", [0]), shape(f"{p}/end", [k]), shape(f"{p}/axis", [1]),
                helper.make_node("Slice", [w, f"{p}/start", f"{p}/end", f"{p}/axis"], [f"{p}/wk"])]
        w = f"{p}/wk"
    out += [helper.make_node("Transpose", [w], [f"{p}/wt"], perm=[1, 0]),  # [K, N]
            helper.make_node("MatMul", [x, f"{p}/wt"], list(node.output[:1]), name=f"{node.name}/twin")]
    return out


def _patch_ort(path: Path) -> bytes | None:
    """Overwrite the int64 of each MatMulNBits' accuracy_level attribute inside the flatbuffer."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        InferenceSession,
    )

    buf = bytearray(path.read_bytes())
    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(bytes(buf), 0).Model().Graph()
    changed = False
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        if node.OpType() != b"MatMulNBits":
            continue
        for j in range(node.AttributesLength()):
            a = node.Attributes(j)
            if a.Name() == b"accuracy_level" and a.I() == INT8_COMPUTE:
                slot = a._tab.Offset(12)  # the table slot Attribute.I() reads (an int64)
                struct.pack_into("<q", buf, a._tab.Pos + slot, 0)
                changed = True
    return bytes(buf) if changed else None


def load_weights(torch, model, weights: ArtifactWeights, names: TensorMap) -> None:
    """Copy the dequantised weights into a whole (materialised) transformers model, each into the
    parameter the tensor map names for it. The output matrix and the embedding become separate
    parameters: the artifact may store them differently even when the checkpoint ties them (an int4
    lm_head beside a float embedding)."""
    with torch.no_grad():
        for name in weights.names():
            w = torch.from_numpy(weights.rows(name))
            if name == names.lm_head:
                model.lm_head.weight = torch.nn.Parameter(w, requires_grad=False)
            elif name == names.embed:
                model.get_input_embeddings().weight = torch.nn.Parameter(w, requires_grad=False)
            else:
                model.get_parameter(names.parameter(name)).copy_(w)
        if names.lm_head not in weights.names() and model.config.tie_word_embeddings and \
                names.embed in weights.names():
            # a quantised embedding but a float lm_head: the lm_head keeps the checkpoint's table
            raise ValueError("artifact quantises the tied embedding but not the lm_head: not a layout edgeqwen writes")


class Overlay:
    """Checkpoint tensors with the artifact's dequantised weights in place of theirs (for the layered
    reference, which reads tensor rows on demand)."""

    def __init__(self, base, weights: ArtifactWeights) -> None:
        self.base, self.weights = base, weights

    def __contains__(self, name: str) -> bool:
        return name in self.weights or name in self.base

    def shape(self, name: str):
        return self.weights.shape(name) if name in self.weights else self.base.shape(name)

    def rows(self, name: str, start: int = 0, stop: int | None = None):
        if name in self.weights:
            return self.weights.rows(name, start, stop)
        return self.base.rows(name, start, stop)
