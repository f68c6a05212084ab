"""Searched-scale asymmetric block quantisation: Olive's OnnxKQuantQuantization, one block of rows at a time.

The idea is llama.cpp's make_qkx2_quants: per block of ``block`` values along K, try 20 scales around
(max - min) / (2^bits - 1), refit scale and offset by weighted least squares (weights |x| + rms(block), so
the large values that dominate a dot product count more), keep the best, then store an integer zero point.
Olive's pass (olive.passes.onnx.kquant_quantization, itself onnxruntime's neural_compressor k_quant) runs it
on the whole graph in memory; this module computes the same bytes on any slice of rows, so the streaming
exporter can quantise a weight of any size tensor by tensor. The arithmetic follows Olive's step for step
(fp32, the same reduction layout, the offset updated inside the search loop as there, the final rounding in
float64): ``tests/test_kquant.py`` checks the packed bytes against Olive's own function.

Output layout is MatMulNBits': B [n, K/block, block*bits/8] (4 bits: low nibble first), scales [n, K/block]
fp32, zero points [n, K/block] unpacked (``pack_zero_points`` packs them two a byte for 4 bits).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

THREADS = min(4, os.cpu_count() or 1)  # the search is ~30 passes over each block: the build's slowest part
SEARCH_STEPS = 20  # factors (2^bits - 1) - 1 + 0.1 * i, i < 20, as Olive's pass
CHUNK_VALUES = 1 << 18  # blocks searched at a time: 1 MB per fp32 temporary keeps the loop in cache


def _search(data: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) [nb, 1] fp32 of each block row of ``data`` [nb, block] fp32 (C-contiguous)."""
    block = data.shape[1]
    maxq, minq = 2**bits - 1, 0
    sum_x2 = np.sum(data**2, axis=1, keepdims=True)
    av_x = np.sqrt(sum_x2 / block)
    weights = np.add(av_x, np.abs(data))  # [nb, block]
    rmin = np.min(data, axis=1, keepdims=True)
    rmax = np.max(data, axis=1, keepdims=True)
    sum_w = np.sum(weights, axis=1, keepdims=True)
    sum_x = np.sum(weights * data, axis=1, keepdims=True)
    iscale = np.ones(rmax.shape, dtype=np.float32)
    mask = rmin != rmax
    iscale[mask] = (maxq - minq) / (rmax[mask] - rmin[mask])
    scale = 1 / iscale
    q = np.clip(np.round(iscale * (data - rmin)), minq, maxq)
    diff = scale * q + rmin - data
    best = np.sum(weights * diff**2, axis=1, keepdims=True)
    for step in range(SEARCH_STEPS):
        factor = np.array([-1 + 0.1 * step + maxq - minq]).astype(np.float32)[0]
        iscale_new = np.ones(rmax.shape, dtype=np.float32)
        mask = rmin != rmax  # the offset moves as blocks improve (Olive's loop reads the updated one)
        iscale_new[mask] = factor / (rmax[mask] - rmin[mask])
        q = np.clip(np.round(iscale_new * (data - rmin)), minq, maxq)
        wq = weights * q
        sum_l = np.sum(wq, axis=1, keepdims=True)
        sum_l2 = np.sum(wq * q, axis=1, keepdims=True)
        sum_xl = np.sum(wq * data, axis=1, keepdims=True)
        d = np.subtract(sum_w * sum_l2, sum_l**2)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / d
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d
        diff = this_scale * q + this_min - data
        mad = np.sum(weights * diff**2, axis=1, keepdims=True)
        better = np.where(mad < best)[0]  # NaN (a constant block: d = 0) never replaces
        best[better] = mad[better]
        scale[better] = this_scale[better]
        rmin[better] = this_min[better]
    return scale, rmin


def quantize_rows(rows: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise ``rows`` [n, K] (K a whole number of blocks) into (B [n, K/block, block*bits/8] uint8,
    scales [n, K/block] fp32, zero points [n, K/block] uint8)."""
    n, k = rows.shape
    kb = k // block
    blocks = np.ascontiguousarray(rows, dtype=np.float32).reshape(n * kb, block)  # [nb, block]
    if kb == 1:
        # Olive hands k-quant the transposed view of its [K, N] weight; with one block per row its reshape is a
        # no-op, so the blocks stay column-major and numpy sums each block in order instead of pairwise (other
        # float sums): keep that layout so the bytes stay Olive's (only K <= block: tiny models)
        blocks = np.asfortranarray(blocks)
    maxq = 2**bits - 1
    q = np.empty(blocks.shape, dtype=np.uint8)
    scales = np.empty((n * kb, 1), dtype=np.float32)
    zero = np.empty((n * kb, 1), dtype=np.uint8)
    step = max(1, CHUNK_VALUES // block)

    def chunk(b0: int) -> None:
        data = blocks[b0:b0 + step]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale, offset = _search(data, bits)
            zp = np.clip((-offset / scale).round(), 0, maxq).astype(np.uint8)
        s64 = scale.astype(np.float64)
        v = np.divide(data, s64)
        np.add(v, zp, out=v)
        np.round(v, out=v)
        np.clip(v, 0, maxq, out=v)
        q[b0:b0 + step] = v
        scales[b0:b0 + step] = scale
        zero[b0:b0 + step] = zp

    starts = range(0, n * kb, step)
    if len(starts) == 1 or THREADS == 1:
        for b0 in starts:
            chunk(b0)
    else:  # numpy's ufuncs release the GIL: chunks write disjoint rows, so threads give the same bytes
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(chunk, starts))
    if bits == 4:
        q = q[:, ::2] | (q[:, 1::2] << 4)
    return q.reshape(n, kb, block * bits // 8), scales.reshape(n, kb), zero.reshape(n, kb)


def pack_zero_points(zero: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' zero points [n * ceil(K/block * bits / 8)] from [n, K/block]: two a byte for 4 bits, low
    nibble first, an odd count's last high nibble 8 (Olive's fill, 0x88)."""
    if bits == 8:
        return zero.reshape(-1)
    n, kb = zero.shape
    padded = np.full((n, kb + kb % 2), 8, dtype=np.uint8)
    padded[:, :kb] = zero & 0x0F
    return (padded[:, ::2] | (padded[:, 1::2] << 4)).reshape(-1)
