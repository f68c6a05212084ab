"""Are the artifact's quantised weights a quantisation of the checkpoint's? The half of the parity gate
that compares bytes: the graph check computes with the artifact's own weights, so it cannot see a weight
written wrong; this reads both, a block of rows at a time, and measures every value's distance from the
checkpoint's in quantisation steps (that block's scale).

Round-to-nearest puts each value within half a step, one step for the value clipped at the top of a
symmetric range ([-8, 7] x scale for 4 bits); anything further is not this checkpoint quantised. The same
pass gives each tensor's relative error, which the quantisation-loss report names when it is high.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.quality.graph_weights import ArtifactWeights

ROWS_PER_READ = 4096
# One step (the clip) plus rounding: DirectML profiles quantise the checkpoint's weights after rounding them to
# fp16 (up to 2^-11 of a value 8 steps large: 0.004 steps). A wrong scale or block is steps off (x1.5: 3.5).
MAX_STEPS = 1.01


def check_weights(weights: ArtifactWeights, checkpoint: Path, top: int = 5) -> dict[str, Any]:
    from edgeqwen.quality.layered import _shards
    from edgeqwen.safetensors_io import CheckpointTensors

    src = CheckpointTensors(checkpoint, _shards(checkpoint))
    errors, worst_steps = [], {}
    for name in weights.names():
        source = name if name in src else "model.embed_tokens.weight"  # a tied model's output matrix
        rows, k = weights.shape(name)
        err = ref = steps = 0.0
        for r in range(0, rows, ROWS_PER_READ):
            stop = min(rows, r + ROWS_PER_READ)
            w = src.rows(source, r, stop)
            d = np.abs(weights.rows(name, r, stop) - w)  # [n, K]
            step = np.repeat(weights.steps(name, r, stop), weights.block(name), axis=1)[:, :k]
            steps = max(steps, float((d / np.maximum(step, 1e-30)).max()))
            err += float((d.astype(np.float64) ** 2).sum())
            ref += float((w.astype(np.float64) ** 2).sum())
        errors.append((name, (err / ref) ** 0.5 if ref else 0.0))
        worst_steps[name] = steps
    errors.sort(key=lambda x: -x[1])
    bad = sorted((n for n, s in worst_steps.items() if s > MAX_STEPS), key=lambda n: -worst_steps[n])
    return {"tensors": len(errors), "max_error_steps": max(worst_steps.values(), default=0.0),
            "not_quantisations": [{"tensor": n, "error_steps": round(worst_steps[n], 3)} for n in bad],
            "worst_tensors": [{"tensor": n, "relative_error": round(e, 5)} for n, e in errors[:top]]}
