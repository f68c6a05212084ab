"""Weight formats: how one checkpoint linear layer becomes initializers and a node.

A source is one or more checkpoint tensors [n_i, K] stacked along their rows (q, k and v make one
fused qkv weight of N = sum n_i rows). Rows are read in blocks of about ``BLOCK_VALUES`` values, so a
weight of any size passes through memory one block at a time.

``FloatWeights``: MatMul with the weight transposed to [K, N] in the graph's float type.
``NBitsWeights``: MatMulNBits, one block of rows at a time, quantised by onnxruntime's own
``quantize_matmul_{4,8}bits`` (``algorithm="rtn"``: the kernel Olive's OnnxBlockWiseRtnQuantization calls
on the whole graph) or by the searched-scale k-quant (``"kquant"``: Olive's OnnxKQuantQuantization,
edgeqwen.compiler.export.kquant): B [N, K/block, block*bits/8] uint8, scales [N * K/block], zero points
[N * ceil(K/block * bits/8)] when asymmetric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np
from onnx import helper

from edgeqwen.compiler.export.data_file import DataFile
from edgeqwen.safetensors_io import CheckpointTensors

MS = "com.microsoft"
BLOCK_VALUES = 8 * 2**20  # values read at a time: 32 MB as fp32


@dataclass
class Sink:
    """What a weight format writes into: the data file, the graph's lists, and a counter of source
    tensors consumed (for progress)."""

    data: DataFile
    src: CheckpointTensors
    nodes: list
    inits: list
    consumed: set
    # quantised weight initializer -> [[checkpoint tensor, rows], ...] stacked in it, in order: the manifest
    # keeps it so validation can read the artifact's own quantised weights back under checkpoint names
    stacked: dict = field(default_factory=dict)
    # B initializers repacked from a checkpoint an Olive PyTorch pass quantised -> (bits, block size)
    prequantized: dict = field(default_factory=dict)
    # B initializer of an asymmetric table -> its zero points one byte per block [N, K/block, 1], the layout
    # GatherBlockQuantized reads beside [N, K/block, block*bits/8] blocks (MatMulNBits packs two a byte)
    gather_zero_points: dict = field(default_factory=dict)

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))


def row_blocks(sink: Sink, names: tuple[str, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """(first row in the stacked weight, fp32 block [n, K]) over the stacked source tensors."""
    at = 0
    for name in names:
        rows, k = sink.src.shape(name)
        step = max(1, BLOCK_VALUES // k)
        for r in range(0, rows, step):
            yield at + r, sink.src.rows(name, r, min(rows, r + step))
        at += rows
        sink.consumed.add(name)


def stacked_shape(sink: Sink, names: tuple[str, ...]) -> tuple[int, int]:
    """(N, K) of the stacked sources."""
    shapes = [sink.src.shape(n) for n in names]
    ks = {s[1] for s in shapes}
    if len(ks) != 1:
        raise ValueError(f"{names}: stacked weights need one input size, got {shapes}")
    return sum(s[0] for s in shapes), ks.pop()


class WeightFormat(Protocol):
    def write(self, sink: Sink, base: str, names: tuple[str, ...]) -> tuple[list[str], int, int]:
        """Write the stacked sources as initializers named after ``base``; returns their names, N, K."""

    def node(self, sink: Sink, x: str, out: str, prefix: str, inputs: list[str], n: int, k: int) -> None:
        """The node computing ``out`` = ``x`` @ W from the initializers ``write`` gave."""


def linear(fmt: WeightFormat, sink: Sink, x: str, out: str, prefix: str, names: tuple[str, ...]) -> None:
    """A linear layer: its weights written, then its node (initializers named after the node's path)."""
    inputs, n, k = fmt.write(sink, f"{prefix.strip('/').replace('/', '.')}.MatMul.weight", names)
    fmt.node(sink, x, out, prefix, inputs, n, k)


@dataclass(frozen=True)
class FloatWeights:
    dtype: np.dtype

    def write(self, sink: Sink, base: str, names: tuple[str, ...]) -> tuple[list[str], int, int]:
        """The stacked [N, K] sources as one [K, N] initializer, a column strip per row block."""
        n_total, k = stacked_shape(sink, names)
        t, region = sink.data.reserve(base, self.dtype, (k, n_total))
        item = np.dtype(self.dtype).itemsize
        for c0, block in row_blocks(sink, names):
            strip = np.ascontiguousarray(block.T, dtype=self.dtype)  # [K, n]
            if strip.shape[1] == n_total:
                region.write(0, strip)
            else:
                for row in range(k):  # row k of [K, N]: columns c0 .. c0+n
                    region.write((row * n_total + c0) * item, strip[row])
        sink.inits.append(t)
        return [base], n_total, k

    def node(self, sink: Sink, x: str, out: str, prefix: str, inputs: list[str], n: int, k: int) -> None:
        sink.node("MatMul", [x, *inputs], [out], f"{prefix}/MatMul")

    def table(self, sink: Sink, init: str, name: str) -> None:
        """An embedding table [V, H] as stored, in the graph's float type."""
        v, h = sink.src.shape(name)
        t, region = sink.data.reserve(init, self.dtype, (v, h))
        for r0, block in row_blocks(sink, (name,)):
            region.write(r0 * h * np.dtype(self.dtype).itemsize, block.astype(self.dtype))
        sink.inits.append(t)


@dataclass(frozen=True)
class NBitsWeights:
    bits: int
    block_size: int
    symmetric: bool = True
    accuracy_level: int = 0  # 4: int8 activations, the fast CPU kernel; 0: the op's default
    dtype: np.dtype = np.dtype(np.float32)  # activations and scales (fp16 on DirectML)
    scales_2d: bool = False  # [N, K/block] (the builder's DirectML layout) instead of [N * K/block]
    algorithm: str = "rtn"  # "rtn": onnxruntime's kernel; "kquant": searched scale and zero point (asymmetric)
    table: bool = False  # an asymmetric embedding table: also write the zero points GatherBlockQuantized reads

    def write(self, sink: Sink, base: str, names: tuple[str, ...]) -> tuple[list[str], int, int]:
        """Quantise the stacked sources block by block; returns (B, scales[, zero points]) names, N, K."""
        n_total, k = stacked_shape(sink, names)
        kb = math.ceil(k / self.block_size)
        blob = self.block_size * self.bits // 8
        zp_per_col = math.ceil(kb / (8 // self.bits))
        b_t, b = sink.data.reserve(f"{base}_Q{self.bits}", np.uint8, (n_total, kb, blob))
        s_shape = (n_total, kb) if self.scales_2d else (n_total * kb,)
        s_t, s = sink.data.reserve(f"{base}_scales", self.dtype, s_shape)
        z_t, z = sink.data.reserve(f"{base}_zero_point", np.uint8, (n_total * zp_per_col,)) \
            if not self.symmetric else (None, None)
        g_t, g = sink.data.reserve(f"{base}_zero_point_gather", np.uint8, (n_total, kb, 1)) \
            if self.table and not self.symmetric else (None, None)
        item = np.dtype(self.dtype).itemsize
        for c0, block in row_blocks(sink, names):
            packed, scales, zero = self._quantize(block, k, kb)
            b.write(c0 * kb * blob, packed)
            s.write(c0 * kb * item, scales)
            if z is not None:
                z.write(c0 * zp_per_col, zero)
            if g is not None:
                g.write(c0 * kb, unpack_zero_points(zero, self.bits, block.shape[0], kb))
        sink.inits.extend(t for t in (b_t, s_t, z_t, g_t) if t is not None)
        sink.stacked[b_t.name] = [[name, sink.src.shape(name)[0]] for name in names]
        if g_t is not None:
            sink.gather_zero_points[b_t.name] = g_t.name
        return [t.name for t in (b_t, s_t, z_t) if t is not None], n_total, k

    def _quantize(self, block: np.ndarray, k: int, kb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """fp32 rows [n, K] -> (B [n, K/block, block*bits/8], scales [n * K/block], packed zero points)."""
        n = block.shape[0]
        if self.algorithm == "kquant":
            from edgeqwen.compiler.export.kquant import pack_zero_points, quantize_rows

            rows = np.zeros((n, kb * self.block_size), dtype=np.float32)  # K padded to whole blocks with 0
            rows[:, :k] = block
            packed, scales, zero = quantize_rows(rows, self.bits, self.block_size)
            return packed, scales.reshape(-1).astype(self.dtype), pack_zero_points(zero, self.bits)
        from onnxruntime.capi import _pybind_state as ort_c

        kernel = {4: ort_c.quantize_matmul_4bits, 8: ort_c.quantize_matmul_8bits}[self.bits]
        w = np.zeros((kb * self.block_size, n), dtype=self.dtype)  # [K padded to whole blocks, n]
        w[:k] = block.T
        packed = np.zeros((n, kb, self.block_size * self.bits // 8), dtype=np.uint8)
        scales = np.zeros(n * kb, dtype=self.dtype)
        zero = np.zeros(n * math.ceil(kb * self.bits / 8), dtype=np.uint8)
        kernel(packed, w, scales, zero, self.block_size, n, k, self.symmetric)
        return packed, scales, zero

    def node(self, sink: Sink, x: str, out: str, prefix: str, inputs: list[str], n: int, k: int) -> None:
        attrs = {"K": k, "N": n, "bits": self.bits, "block_size": self.block_size}
        if self.accuracy_level:
            attrs["accuracy_level"] = self.accuracy_level
        sink.node("MatMulNBits", [x, *inputs], [out], f"{prefix}/MatMul_Q{self.bits}", MS, **attrs)


def unpack_zero_points(packed: np.ndarray, bits: int, n: int, kb: int) -> np.ndarray:
    """MatMulNBits' zero points [n * ceil(kb * bits/8)] -> one byte per block [n * kb] (low nibble first)."""
    if bits == 8:
        return packed
    z = packed.reshape(n, -1)
    return np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :kb].reshape(-1)
