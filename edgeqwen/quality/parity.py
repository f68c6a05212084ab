"""The parity check: the artifact against transformers computing with the artifact's own quantised weights,
dequantised back into it.

A correct build then differs only by float summation order: what the compiler must get exactly right on
any checkpoint. What quantisation costs is a separate question, answered against plain fp32.

MatMulNBits with accuracy_level 4 (the fast CPU kernel) rounds its input to int8 per block of K. That
rounding is emulable (round(x / (max|x| / 127)) per block agrees with the kernel to 4e-7 of the output's
range), but an input a float ulp away from a rounding boundary flips one int8 step, and a deep random-
weight network amplifies such flips into O(1) logit differences (the Qwen2.5-0.5B shape: KL 0.04 with
emulation, measured). So parity runs on a twin of the artifact whose MatMulNBits compute in fp32
(accuracy_level 0 for 4-bit weights; each 8-bit weight split into two 4-bit ones, see _split_8bit; the
same weight bytes), exact on any checkpoint, and what the int8 activations add is measured apart, between
the artifact and its twin.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeqwen.artifact import MANIFEST_NAME, read_manifest, sha256_file
from edgeqwen.model.tensors import TensorMap
from edgeqwen.quality.graph_weights import ArtifactWeights

INT8_COMPUTE = 4  # MatMulNBits accuracy_level that quantises activations to int8


def exact_compute_twin(folder: Path, manifest: dict[str, Any], out: Path) -> Path | None:
    """``out``: the artifact with every MatMulNBits at accuracy_level 0, other files hard-linked (``out``
    should be on the artifact's file system); None when no node computes in int8 (its own twin)."""
    model_file = manifest["runtime"].get("model_file", "model.onnx")
    if model_file.endswith(".ort"):
        data = _patch_ort(folder / model_file)
    else:
        data = _patch_onnx(folder / model_file, out)
    if data is None:
        return None
    out.mkdir(parents=True, exist_ok=True)  # the split 8-bit weights may be there already
    for f in folder.iterdir():
        if f.name not in (model_file, MANIFEST_NAME):
            _link(f, out / f.name)
    (out / model_file).write_bytes(data)
    # the graph changes size where 8-bit weights were split, into a data file of the twin's own: its manifest
    # lists both, so the engine's checks hold
    if (folder / MANIFEST_NAME).is_file():
        on_disk = read_manifest(folder)
        for name in (model_file, TWIN_DATA):
            if (out / name).is_file():
                on_disk["files"][name] = {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
        (out / MANIFEST_NAME).write_text(json.dumps(on_disk, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _link(src: Path, dst: Path) -> None:
    """A hard link (onnxruntime refuses external data reached through a symlink out of the model's folder);
    a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _patch_onnx(path: Path, out: Path) -> bytes | None:
    """The twin's graph: 4-bit int8-compute nodes at accuracy_level 0, 8-bit ones split in two 4-bit nodes
    (``_split_8bit``) whose weights go to ``out``/TWIN_DATA. None when nothing computes in int8."""
    import onnx

    from edgeqwen.quality.graph_weights import _OnnxFile

    source = _OnnxFile(path)
    model = source.model
    nodes, changed, data = [], False, None
    for node in list(model.graph.node):
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "MatMulNBits" or "accuracy_level" not in attrs or attrs["accuracy_level"].i != INT8_COMPUTE:
            nodes.append(node)
            continue
        changed = True
        if attrs["bits"].i == 8:
            data = data or _TwinData(out / TWIN_DATA)
            nodes += _split_8bit(node, {k: onnx.helper.get_attribute_value(v) for k, v in attrs.items()}, source,
                                 data, model.graph)
        else:
            attrs["accuracy_level"].i = 0
            nodes.append(node)
    if data is not None:
        data.close()
    if not changed:
        return None
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if data is not None:  # the 8-bit weights the split replaced: unread (onnxruntime would warn for each)
        used = {name for node in nodes for name in node.input} | {o.name for o in model.graph.output}
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return model.SerializeToString()


TWIN_DATA = "twin.onnx.data"  # the split 8-bit weights' nibbles, beside the artifact's own (hard-linked) data
SPLIT_ROWS = 8192  # rows of an 8-bit weight split at a time: 8,192 x 4,096 bytes of codes, 32 MB


class _TwinData:
    """The twin's own external data file, written tensor after tensor (each at a 4 KiB offset)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "wb")

    def tensor(self, graph, name: str, dtype: int, dims: list[int], parts: Iterable[np.ndarray]) -> None:
        """Append initializer ``name`` to ``graph``, its bytes ``parts`` (arrays, in order) in this file."""
        from onnx import TensorProto

        self.file.write(b"\0" * (-self.file.tell() % 4096))
        offset, length = self.file.tell(), 0
        for part in parts:
            self.file.write(memoryview(np.ascontiguousarray(part)))
            length += part.nbytes
        t = TensorProto(name=name, data_type=dtype, dims=dims, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=key, value=value)
        graph.initializer.append(t)

    def close(self) -> None:
        self.file.close()


def _nibbles(q: np.ndarray, high: bool) -> np.ndarray:
    """uint8 codes [..., 2m] -> their high or low nibbles, two a byte, low nibble first [..., m]."""
    v = (q >> 4) if high else (q & 0x0F)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def _split_8bit(node, attrs: dict[str, Any], source, data: _TwinData, graph) -> list:
    """An 8-bit MatMulNBits as two 4-bit ones at accuracy_level 0, summed. A code q = 16 h + l and its zero
    point z = 16 zh + zl give (q - z) s = (h - zh) 16s + (l - zl) s, each term exact in float, so A W comes out
    exactly but for the order of the sum, at onnxruntime's fast fp32-compute 4-bit kernel, in the 8-bit
    weight's bytes. (onnxruntime 1.32's 8-bit MatMulNBits has no fp32-compute kernel: it dequantizes the whole
    weight on every call, 71 ms a call for 8,192 x 1,024 against 0.5 ms with int8 compute, so the twin of a
    Qwen3.5-2B-shaped int8 model ran for hours; an fp32 MatMul folded at load holds 4 bytes a weight, 8 GB
    there.)"""
    from onnx import TensorProto, helper

    if len(node.input) > 4 and any(node.input[4:]):
        raise ValueError(f"MatMulNBits {node.name}: g_idx or bias inputs are not a layout edgeqwen writes")
    n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
    kb = -(-k // block)
    x, b, scales = node.input[:3]
    zp = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    s = source.read(scales)  # [N * kb]
    z = source.read(zp).reshape(n, kb) if zp else np.full((n, kb), 128, np.uint8)  # symmetric: 2^(bits - 1)
    zpad = np.zeros((n, kb + kb % 2), np.uint8)  # 4-bit zero points: ceil(kb / 2) bytes a row
    zpad[:, :kb] = z
    p = f"{node.name}/twin"
    scale_type = TensorProto.FLOAT16 if s.dtype == np.float16 else TensorProto.FLOAT
    for high in (True, False):
        part = "hi" if high else "lo"
        codes = (_nibbles(source.read(b, r * kb * block, min(SPLIT_ROWS, n - r) * kb * block), high)
                 for r in range(0, n, SPLIT_ROWS))  # rows in order: [rows * kb * block / 2] each
        data.tensor(graph, f"{p}/{part}/B", TensorProto.UINT8, [n, kb, block // 2], codes)
        data.tensor(graph, f"{p}/{part}/scales", scale_type, [n * kb], [s * s.dtype.type(16) if high else s])
        data.tensor(graph, f"{p}/{part}/zp", TensorProto.UINT8, [n * (kb + kb % 2) // 2], [_nibbles(zpad, high)])
    common = dict(domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=0)
    return [helper.make_node("MatMulNBits", [x, f"{p}/{part}/B", f"{p}/{part}/scales", f"{p}/{part}/zp"],
                             [f"{p}/{part}/y"], name=f"{p}/{part}", **common) for part in ("hi", "lo")] + \
        [helper.make_node("Add", [f"{p}/hi/y", f"{p}/lo/y"], list(node.output[:1]), name=f"{p}/add")]


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
