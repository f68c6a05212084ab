"""A group's scale and zero point chosen by the rounding error they give, not by the group's range alone.

Olive's WeightQuantizer spans each group's [min, max] (0 included): one outlier stretches the scale, and
every other weight of the group rounds on a coarser grid. GPTQ's original quantiser (its ``mse`` option,
as GPTQModel's) also tries the range shrunk by a few factors and keeps, row by row, the one whose
fake-quantised group is nearest the group in squared error; the clipped outliers' own error then goes to
the rest of the row through GPTQ's update, as any other rounding error does.

Measured (benchmarks/reports/int4-quality.md, weights only, group 256): KL 0.0156 -> 0.0126 on the trained
small Qwen3.5, 0.00103 -> 0.00100 on the small Qwen3. Nine shrinks of 1.0 .. 0.6: a grid of 17 down to 0.2
chose nothing below 0.6 there and costs twice the time; a Hessian-weighted error measured no better.
"""

from __future__ import annotations

import torch

from edgeqwen.compiler.gptq.options import ModuleFormat

SHRINKS = tuple(1 - i / 20 for i in range(9))  # 1.0, 0.95, ..., 0.6 of the group's range; 1.0 first: Olive's
ROWS = 4096  # rows scored at a time: [4096, 256] fp32 is 4 MB (whole-matrix temporaries were 1.5x slower)


@torch.no_grad()
def searched_qparams(cols: torch.Tensor, fmt: ModuleFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale [N, 1] fp32 and zero point [N, 1] int32 of ``cols`` [N, G] (one group of every row): Olive's
    WeightQuantizer.find_qparams values where the full range rounds best (a tie keeps it), else those of
    the shrink with the least squared error. The zero point does not move with the shrink (the range
    shrinks about 0, which stays on the grid), so only the scale is searched."""
    cols = cols.contiguous()  # the solve passes a transposed view: scored strided, 6x slower (measured)
    maxq = 2 ** fmt.bits - 1
    n = cols.shape[0]
    lo = cols.amin(1).clamp_(max=0)  # [N]: 0 in the range, as Olive's
    hi = cols.amax(1).clamp_(min=0)
    if fmt.symmetric:
        hi = torch.maximum(-lo, hi)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo[empty], hi[empty] = -1.0, 1.0
    full = (hi - lo) / maxq  # [N]: Olive's scale, the p = 1.0 candidate
    zero = torch.full_like(full, (maxq + 1) // 2) if fmt.symmetric else torch.round(-lo / full).clamp_(0, maxq)
    best_err = torch.full((n,), float("inf"))
    best_scale = full.clone()
    work = torch.empty(min(ROWS, n), cols.shape[1])
    for r0 in range(0, n, ROWS):
        r1 = min(r0 + ROWS, n)
        x, z, b = cols[r0:r1], zero[r0:r1, None], work[:r1 - r0]  # [R, G], [R, 1], [R, G]
        for p in SHRINKS:
            scale = (hi[r0:r1] - lo[r0:r1]) * p / maxq if p != 1.0 else full[r0:r1]  # [R]
            torch.div(x, scale[:, None], out=b)
            b.add_(z).round_().clamp_(0, maxq).sub_(z).mul_(scale[:, None]).sub_(x)  # fake-quantised - x
            err = torch.linalg.vector_norm(b, dim=1)  # [R]
            better = err < best_err[r0:r1]
            best_err[r0:r1] = torch.where(better, err, best_err[r0:r1])
            best_scale[r0:r1] = torch.where(better, scale, best_scale[r0:r1])
    return best_scale[:, None], zero[:, None].to(torch.int32)
