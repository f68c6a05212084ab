"""Are the artifact's quantised weights a quantisation of the checkpoint's? The half of the parity gate
that compares bytes: the graph check computes with the artifact's own weights, so it cannot see a weight
written wrong; this reads both, a block of rows at a time, and measures every value's distance from the
checkpoint's in quantisation steps (that block's scale).

Round-to-nearest puts each value within half a step, one step for the value clipped at the top of a
symmetric range ([-8, 7] x scale for 4 bits); anything further is not this checkpoint quantised. An
asymmetric block (zero points: RTN's min/max, or k-quant's searched scale and offset, which may clip a few
large values on purpose) is checked against the checkpoint's values clamped to the range the block can hold:
its codes must be the round-to-nearest ones under the block's own scale and zero point (half a step), so a
wrong block, row, packing or zero point shows; how well the search chose the scale is the loss report's
business. The same pass gives each tensor's relative error, which the quantisation-loss report names when
it is high.

A weight GPTQ quantised is not within a step of the checkpoint (GPTQ moves later columns to make up for
earlier rounding); it is checked against the quantised checkpoint Olive's pass wrote instead, where it
must be the same value (a repack, no arithmetic): EXACT_STEPS allows only float evaluation order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeqwen.quality.graph_weights import ArtifactWeights
from edgeqwen.quality.results import OffTensor, TensorError, WeightCheck

ROWS_PER_READ = 4096
# One step (the clip) plus rounding: DirectML profiles quantise the checkpoint's weights after rounding them to
# fp16 (up to 2^-11 of a value 8 steps large: 0.004 steps). A wrong scale or block is steps off (x1.5: 3.5).
MAX_STEPS = 1.01
EXACT_STEPS = 1e-3
# Within a block's range: half a step plus fp32 evaluation order (fp16 rounding on DirectML as above).
ROUND_STEPS = 0.505


def olive_rows(src, name: str, start: int, stop: int, k: int) -> np.ndarray:
    """fp32 [stop - start, K] of an Olive-quantised ``X.weight``: (q - zero point) x scale per group."""
    from edgeqwen.quality.graph_weights import _unpack

    p = name.removesuffix(".weight")
    scales = src.rows(p + ".scales", start, stop)  # [n, K/group]
    packed = src.rows(p + ".qweight", start, stop, raw=True)  # [n, K*bits/8], low bits first
    n, kb = scales.shape
    bits = 8 * packed.shape[1] // k
    q = _unpack(packed, bits).astype(np.float32).reshape(n, kb, -1)  # [n, K/group, group]
    if p + ".qzeros" in src:
        z = _unpack(src.rows(p + ".qzeros", start, stop, raw=True), bits)[:, :kb, None].astype(np.float32)
    else:
        z = np.float32(2 ** (bits - 1))  # symmetric: the midpoint of the unsigned range
    return ((q - z) * scales[:, :, None]).reshape(n, -1)


def check_weights(weights: ArtifactWeights, checkpoint: Path, top: int = 5,
                  quantized: Path | None = None) -> WeightCheck:
    """Every quantised weight against the checkpoint (within MAX_STEPS) or, for one an Olive pass quantised,
    against ``quantized`` (within EXACT_STEPS; unchecked without it, e.g. once the build's work folder is gone)."""
    from edgeqwen.quality.layered import _shards
    from edgeqwen.safetensors_io import CheckpointTensors

    src = CheckpointTensors(checkpoint, _shards(checkpoint))
    olive = CheckpointTensors(quantized, _shards(quantized)) if quantized else None
    errors, worst_steps, limits, unchecked = [], {}, {}, []
    for name in weights.names():
        pre = weights.is_prequantized(name)
        if pre and olive is None:
            unchecked.append(name)
        error, steps = _compare(weights, src, name, olive if pre else None, measure_steps=not (pre and olive is None))
        errors.append((name, error))
        if steps is not None:
            limit = EXACT_STEPS if pre else ROUND_STEPS if weights.asymmetric(name) else MAX_STEPS
            worst_steps[name], limits[name] = steps, limit
    errors.sort(key=lambda x: -x[1])
    bad = sorted((n for n, s in worst_steps.items() if s > limits[n]), key=lambda n: -worst_steps[n])
    return WeightCheck(
        tensors=len(errors), max_error_steps=max(worst_steps.values(), default=0.0),
        prequantized=sum(weights.is_prequantized(n) for n in weights.names()), unchecked=unchecked,
        prequantized_max_steps=max((s for n, s in worst_steps.items() if limits[n] == EXACT_STEPS), default=0.0),
        not_quantisations=[OffTensor(n, round(worst_steps[n], 3)) for n in bad],
        worst_tensors=[TensorError(n, round(e, 5)) for n, e in errors[:top]])


def _compare(weights: ArtifactWeights, src, name: str, olive, measure_steps: bool) -> tuple[float, float | None]:
    """(relative error against the checkpoint, largest distance in quantisation steps from the expected
    values: the checkpoint's, or ``olive``'s quantised ones), a block of rows at a time."""
    # a tied model's output matrix is the checkpoint's embedding
    source = weights.tensors.output_matrix(src) if name == weights.tensors.lm_head else name
    rows, k = weights.shape(name)
    err = ref = steps = 0.0
    for r in range(0, rows, ROWS_PER_READ):
        stop = min(rows, r + ROWS_PER_READ)
        a, w = weights.rows(name, r, stop), src.rows(source, r, stop)  # [n, K] each
        err += float(((a - w).astype(np.float64) ** 2).sum())
        ref += float((w.astype(np.float64) ** 2).sum())
        if measure_steps:
            expected = w if olive is None else olive_rows(olive, name, r, stop, k)
            held = weights.code_range(name, r, stop) if olive is None else None
            if held is not None:  # asymmetric: the codes are round-to-nearest inside the block's range
                block = weights.block(name)
                expected = np.clip(expected, *(np.repeat(x, block, axis=1)[:, :k] for x in held))
            d = np.abs(a - expected)
            step = np.repeat(weights.steps(name, r, stop), weights.block(name), axis=1)[:, :k]
            steps = max(steps, float((d / np.maximum(step, 1e-30)).max()))
    return ((err / ref) ** 0.5 if ref else 0.0), (steps if measure_steps else None)
