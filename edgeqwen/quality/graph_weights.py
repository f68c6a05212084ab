"""The artifact's own quantised weights, read back from the built graph and dequantised, under the
checkpoint's tensor names: what the parity reference computes with.

Nothing is recomputed from the checkpoint: the blocks, scales and zero points are the bytes the
artifact ships (model.onnx + model.onnx.data, or the ORT-format model.ort of android profiles). The
manifest says which checkpoint tensors each quantised weight stacks (``stacked_sources``: a fused qkv
weight is q, k and v rows in order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import EdgeQwenError
from edgeqwen.model.tensors import TensorMap

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16}  # TensorProto types


@dataclass(frozen=True)
class QuantNode:
    op: str  # MatMulNBits or GatherBlockQuantized
    data: str  # B: [N, K/block, block*bits/8] uint8
    scales: str
    zero_points: str | None
    bits: int
    block: int
    k: int
    n: int
    accuracy_level: int
    output: str


class _OnnxFile:
    """model.onnx without its weights in memory; tensors read from the external data file on demand."""

    def __init__(self, path: Path) -> None:
        import onnx

        self.model = onnx.load(str(path), load_external_data=False)
        self.folder = path.parent
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.producers = {o: n for n in self.model.graph.node for o in n.output}

    def nodes(self) -> list[tuple[str, list[str], list[str], dict[str, int]]]:
        from onnx import helper

        return [(n.op_type, list(n.input), list(n.output), {a.name: helper.get_attribute_value(a) for a in n.attribute})
                for n in self.model.graph.node]

    def source(self, name: str) -> str:
        """Follow a Reshape back to its initializer (the embedding's scales are reshaped in the graph)."""
        while name not in self.inits and name in self.producers and self.producers[name].op_type == "Reshape":
            name = self.producers[name].input[0]
        return name

    def read(self, name: str, start: int = 0, count: int | None = None) -> np.ndarray:
        """Flat elements [start, start + count) of an initializer."""
        t = self.inits[name]
        dtype = np.dtype(_NP[t.data_type])
        total = math.prod(t.dims)
        count = total - start if count is None else count
        if t.data_location == 1:  # external
            info = {e.key: e.value for e in t.external_data}
            with open(self.folder / info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)) + start * dtype.itemsize)
                return np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
        from onnx import numpy_helper

        return numpy_helper.to_array(t).reshape(-1)[start:start + count]


class _OrtFile:
    """model.ort (flatbuffer): read with the schema bindings onnxruntime ships."""

    def __init__(self, path: Path) -> None:
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
            InferenceSession,
        )

        self.buf = path.read_bytes()
        self.graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(self.buf, 0).Model().Graph()
        g = self.graph
        self.inits = {g.Initializers(i).Name().decode(): g.Initializers(i) for i in range(g.InitializersLength())}

    def nodes(self) -> list[tuple[str, list[str], list[str], dict[str, int]]]:
        out = []
        for i in range(self.graph.NodesLength()):
            n = self.graph.Nodes(i)
            attrs = {n.Attributes(j).Name().decode(): n.Attributes(j).I() for j in range(n.AttributesLength())}
            out.append((n.OpType().decode(), [n.Inputs(j).decode() for j in range(n.InputsLength())],
                        [n.Outputs(j).decode() for j in range(n.OutputsLength())], attrs))
        return out

    def source(self, name: str) -> str:
        return name  # reshapes of constants are folded into initializers in the ORT format

    def read(self, name: str, start: int = 0, count: int | None = None) -> np.ndarray:
        t = self.inits[name]
        flat = t.RawDataAsNumpy().view(_NP[t.DataType()])
        return flat[start:] if count is None else flat[start:start + count]


class ArtifactWeights:
    """Dequantised weights [rows, K] by checkpoint tensor name (``names``: the checkpoint's tensor map); the
    output matrix is under the map's lm_head name (a tied model's too: the artifact quantises it apart from
    the embedding when it must)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], names: TensorMap) -> None:
        stacked = manifest.get("quantization", {}).get("export", {}).get("stacked_sources")
        if stacked is None:
            raise EdgeQwenError(f"{folder}: the manifest does not say which checkpoint tensors its quantised weights "
                                f"hold, so the parity gate cannot run (built by --exporter olive or an older "
                                f"edgeqwen); build with the streaming exporter (the default), or --no-validate")
        # quantised by an Olive PyTorch pass (GPTQ) before export: B initializers whose values that pass chose
        self.prequantized = set(manifest["quantization"]["export"].get("prequantized", []))
        model_file = manifest["runtime"].get("model_file", "model.onnx")
        self.file = (_OrtFile if model_file.endswith(".ort") else _OnnxFile)(folder / model_file)
        self.tensors = names
        self.where: dict[str, tuple[QuantNode, int, int]] = {}  # name -> (node, first row, rows)
        for op, ins, outs, attrs in self.file.nodes():
            if op not in ("MatMulNBits", "GatherBlockQuantized"):
                continue
            node = self._node(op, ins, outs, attrs)
            if op == "GatherBlockQuantized":
                self.where[names.embed] = (node, 0, node.n)
            elif outs[0] == "logits":
                self.where[names.lm_head] = (node, 0, node.n)
            else:
                at = 0
                for name, rows in stacked[ins[1]]:
                    self.where[name] = (node, at, rows)
                    at += rows

    def _node(self, op: str, ins: list[str], outs: list[str], attrs: dict[str, int]) -> QuantNode:
        data = ins[0] if op == "GatherBlockQuantized" else ins[1]
        scales = self.file.source(ins[2])
        zp = self.file.source(ins[3]) if len(ins) > 3 and ins[3] else None
        bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
        t = self.file.inits[data]
        n, kb = (int(d) for d in (t.dims[:2] if hasattr(t, "dims") else t.DimsAsNumpy()[:2]))
        k = int(attrs.get("K", kb * block))
        return QuantNode(op, data, scales, zp, bits, block, k, n, int(attrs.get("accuracy_level", 0)), outs[0])

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def is_prequantized(self, name: str) -> bool:
        return self.where[name][0].data in self.prequantized

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, int]:
        node, _, rows = self.where[name]
        return rows, node.k

    def asymmetric(self, name: str) -> bool:
        return self.where[name][0].zero_points is not None

    def block(self, name: str) -> int:
        return self.where[name][0].block

    def steps(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """|scale| [stop - start, K/block]: one quantisation step of each block."""
        node, first, count = self.where[name]
        stop = count if stop is None else stop
        kb = math.ceil(node.k / node.block)
        return np.abs(self.file.read(node.scales, (first + start) * kb, (stop - start) * kb).astype(np.float32)
                      .reshape(stop - start, kb))

    def code_range(self, name: str, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(lowest, highest) value [stop - start, K/block] each block of an asymmetric weight can hold:
        (0 - zero point) x scale and (2^bits - 1 - zero point) x scale; None for symmetric blocks."""
        node, first, count = self.where[name]
        if not node.zero_points:
            return None
        stop = count if stop is None else stop
        kb = math.ceil(node.k / node.block)
        scale = self.file.read(node.scales, (first + start) * kb, (stop - start) * kb).astype(np.float32)
        zero = self._zero_points(node, first + start, stop - start, kb)
        lo, hi = -zero * scale.reshape(-1, kb), (2 ** node.bits - 1 - zero) * scale.reshape(-1, kb)
        return np.minimum(lo, hi), np.maximum(lo, hi)

    def _zero_points(self, node: QuantNode, r0: int, n: int, kb: int) -> np.ndarray:
        """fp32 [n, K/block] zero points of rows r0 .. r0 + n."""
        if node.op == "GatherBlockQuantized":  # one byte per block [V, K/block, 1]
            return self.file.read(node.zero_points, r0 * kb, n * kb).reshape(n, kb).astype(np.float32)
        per_row = math.ceil(kb * node.bits / 8)  # MatMulNBits: packed, two a byte for 4 bits
        z = _unpack(self.file.read(node.zero_points, r0 * per_row, n * per_row).reshape(n, per_row), node.bits)
        return z.reshape(n, -1)[:, :kb].astype(np.float32)

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """fp32 [stop - start, K]: (q - zero point) x scale per block, padding past K dropped."""
        node, first, count = self.where[name]
        stop = count if stop is None else stop
        r0, n = first + start, stop - start
        kb = math.ceil(node.k / node.block)
        blob = node.block * node.bits // 8
        packed = self.file.read(node.data, r0 * kb * blob, n * kb * blob).reshape(n, kb, blob)
        scales = self.file.read(node.scales, r0 * kb, n * kb).astype(np.float32).reshape(n, kb, 1)
        q = _unpack(packed, node.bits).astype(np.float32)  # [n, kb, block]
        if node.zero_points:
            zero = self._zero_points(node, r0, n, kb)[:, :, None]
        else:
            zero = np.float32(2 ** (node.bits - 1))  # symmetric: the midpoint of the unsigned range
        return ((q - zero) * scales).reshape(n, kb * node.block)[:, :node.k]


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes -> unsigned values, low nibble first for 4 bits: [..., m] -> [..., m * 8 / bits]."""
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
