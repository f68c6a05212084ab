"""GPTQ's solve written for the CPU: Olive's algorithm (Gptq.process_module) on the transposed weight, and
one inverse-Hessian factor per input group instead of one per linear layer.

Olive's loop walks the weight [N, K] column by column: every column read and every rank-1 update is strided
(N cache lines a column), and it also computes a loss matrix nobody reads. Here the weight is held as
W^T [K, N], so a column is a contiguous row, and the Cholesky chain (the solve's largest single cost: three
K^3/3 factorisations, 12,288^3 for an 8B down_proj) is done once for q, k and v (and once for gate and up),
which read the same Hessian. The steps, the damping, dead inputs, the group parameters (taken at each
group's first column from the weight as the previous blocks left it), act order and the quantiser's
arithmetic are Olive's; the updates run in place (fused multiply-adds, the block's product summed into the
weight), so their rounding differs: given the same Hessian almost every value is Olive's
(tests/test_gptq_layerwise.py), but one on a rounding boundary can flip, and GPTQ feeds that column's error
to the rest of its row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeqwen.compiler.gptq.clip_search import searched_qparams
from edgeqwen.compiler.gptq.hessian import Hessian
from edgeqwen.compiler.gptq.options import ModuleFormat

BLOCK = 128  # Olive's default blocksize: columns solved before the lazy update of the rest


DAMP_LIMIT = 1.0  # the damping (a share of H's mean diagonal) past which a Hessian is given up on


class NotPositiveDefinite(Exception):
    """H damped by up to DAMP_LIMIT of its mean diagonal still had no Cholesky factor."""


@dataclass(frozen=True)
class InverseFactor:
    """The upper Cholesky factor of the damped inverse Hessian, [K, K], in the (possibly permuted) column
    order the solve walks; ``dead`` marks inputs that never fired (their weights are zeroed)."""

    u: torch.Tensor  # [K, K] upper triangular
    dead: torch.Tensor  # [K] bool, original order
    perm: torch.Tensor | None  # act order's column order (largest Hessian diagonal first), or None
    damp: float  # the damping used: the profile's, or more where H was not positive definite at it


@torch.no_grad()
def inverse_factor(h: torch.Tensor, percdamp: float, actorder: bool) -> InverseFactor:
    """Olive's preparation of H (consumed, [K, K] fp32): dead inputs get a unit diagonal, act order permutes,
    the diagonal is damped by ``percdamp`` of its mean, then cholesky -> cholesky_inverse -> upper cholesky.
    Where a factorisation fails (H singular or nearly: few windows for a wide input, a rank-deficient
    activation) the damping doubles, up to DAMP_LIMIT, as GPTQModel raises it, instead of ending the build;
    the damping used is in the result. Olive's solver would stop with a LinAlgError there."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    perm = None
    if actorder:
        perm = torch.argsort(torch.diag(h), descending=True)
        h = h[perm][:, perm]
    if not bool(torch.isfinite(h).all()):
        raise NotPositiveDefinite("it is not finite (NaN or infinite activations reach this input)")
    diag = torch.arange(h.shape[0])
    mean = torch.mean(torch.diag(h))
    damp, added = percdamp, 0.0
    while True:
        h[diag, diag] += (damp - added) * mean  # the first pass adds exactly Olive's percdamp * mean
        added = damp
        u = _upper_inverse_factor(h)
        if u is not None:
            return InverseFactor(u, dead, perm, damp)
        if damp >= DAMP_LIMIT:
            raise NotPositiveDefinite(f"it has no Cholesky factor even damped by {damp:.0%} of its mean diagonal")
        damp = min(DAMP_LIMIT, 2 * damp)


def _upper_inverse_factor(h: torch.Tensor) -> torch.Tensor | None:
    """The upper Cholesky factor of H^-1 [K, K], or None where either factorisation fails. One [K, K]
    buffer besides ``h`` (kept whole for a retry): the inverse and the second factor overwrite the first
    factor (LAPACK's potri and potrf work in place; the values are those of the out-of-place calls), so the
    solve's peak is 2 K^2 floats, not 3 (Qwen3-8B's down_proj: 0.6 GB less)."""
    low, info = torch.linalg.cholesky_ex(h)  # [K, K] lower
    if int(info) != 0:
        return None
    torch.cholesky_inverse(low, out=low)  # H^-1, in place
    torch.linalg.cholesky_ex(low, upper=True, out=(low, info))  # its upper factor, in place
    return low if int(info) == 0 else None


def _qparams(cols: torch.Tensor, fmt: ModuleFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [N, 1] of ``cols`` [N, G] (one group of every row): Olive's WeightQuantizer
    with a per-row group, so the parameters are its values exactly."""
    from olive.common.quant.utils import WeightQuantizer

    return WeightQuantizer(bits=fmt.bits, symmetric=fmt.symmetric, group_size=-1).find_qparams(cols)


@torch.no_grad()
def solve(weight: torch.Tensor, inv: InverseFactor, fmt: ModuleFormat,
          clip_search: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on ``weight`` [N, K]: (fake-quantised weight [N, K] fp32, scales [N, groups] fp32, zero points
    [N, groups] int32), the values Olive's process_module returns up to the block update's summation order;
    with ``clip_search`` each group's parameters are chosen by their rounding error (clip_search)."""
    qparams = searched_qparams if clip_search else _qparams
    maxq = 2 ** fmt.bits - 1
    w = weight.detach().float().clone()  # [N, K]
    w[:, inv.dead] = 0
    if inv.perm is not None:
        w = w[:, inv.perm]
    wt = w.t().contiguous()  # [K, N]: column k of the weight is row k here
    del w
    k_in = wt.shape[0]
    group = fmt.group_size if fmt.group_size > 0 else k_in
    u = inv.u
    qt = torch.empty_like(wt)
    scales, zeros = [], []
    scale = zero = None
    for i1 in range(0, k_in, BLOCK):
        i2 = min(i1 + BLOCK, k_in)
        w1 = wt[i1:i2].clone()  # [c, N], updated column by column
        err = torch.empty_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:  # from the weight as the earlier blocks left it (Olive reads W, not W1)
                scale, zero = qparams(wt[col:col + group].t(), fmt)  # [N, 1] each
                scale, zero = scale.flatten(), zero.flatten()
                scales.append(scale)
                zeros.append(zero)
            x = w1[i]
            q = (torch.round(x / scale + zero).clamp_(0, maxq) - zero) * scale
            qt[col] = q
            e = (x - q) / u[col, col]
            w1[i + 1:].addr_(u[col, col + 1:i2], e, alpha=-1)  # in place: no [c, N] temporary a column
            err[i] = e
        if i2 < k_in:
            wt[i2:].addmm_(u[i1:i2, i2:].t(), err, alpha=-1)  # [K - i2, N] -= [K - i2, c] @ [c, N], in place
    q = qt.t()
    if inv.perm is not None:
        q = q[:, torch.argsort(inv.perm)]
    return q.contiguous(), torch.stack(scales, 1), torch.stack(zeros, 1).to(torch.int32)


def act_order(fmt: ModuleFormat, desc_act: bool | None) -> bool:
    """Whether a module of format ``fmt`` is solved in act order: ``desc_act``, or when None (Olive's
    default) exactly for one group a row."""
    return fmt.group_size == -1 if desc_act is None else desc_act


def factor_of(hessian: Hessian, fmt: ModuleFormat, percdamp: float, desc_act: bool | None) -> InverseFactor:
    """The factor for a module of format ``fmt`` (``hessian`` consumed)."""
    return inverse_factor(hessian.h, percdamp, act_order(fmt, desc_act))
