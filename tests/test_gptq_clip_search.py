"""The layer-wise GPTQ's searched group parameters (edgeqwen.compiler.gptq.clip_search, ``clip_search = true``):
never a worse group than Olive's min/max range, Olive's own values where the range is best, and a lower
layer output error than min/max groups where weights have outliers; the profile option checked with the
profile. The KL it buys on trained models is in benchmarks/reports/int4-quality.md."""

from __future__ import annotations

import pytest


def _olive(cols, fmt):
    from olive.common.quant.utils import WeightQuantizer

    return WeightQuantizer(bits=fmt.bits, symmetric=fmt.symmetric, group_size=-1).find_qparams(cols)


def _error(cols, scale, zero, bits):
    """Squared rounding error of each row [N] of ``cols`` [N, G] on the grid (scale, zero) [N, 1]."""
    import torch

    q = (torch.round(cols / scale + zero).clamp(0, 2 ** bits - 1) - zero) * scale
    return ((q - cols) ** 2).sum(1)


@pytest.mark.parametrize("bits,symmetric", [(4, False), (4, True), (8, False), (2, False)])
def test_a_searched_group_rounds_no_worse_than_olives_and_keeps_olives_values_where_they_are_best(bits, symmetric):
    import torch

    from edgeqwen.compiler.gptq.clip_search import searched_qparams
    from edgeqwen.compiler.gptq.options import ModuleFormat

    fmt = ModuleFormat(bits, symmetric, 128)
    g = torch.Generator().manual_seed(bits + symmetric)
    cols = torch.cat([torch.randn(3000, 128, generator=g),  # Gaussian rows
                      torch.distributions.StudentT(3.0).sample((3000, 128)),  # heavy-tailed rows
                      torch.rand(200, 128, generator=g),  # all positive (0 joins the range)
                      torch.zeros(8, 128)])  # a dead input's zeroed group
    cols[:50, 7] *= 20  # outliers
    scale, zero = searched_qparams(cols, fmt)
    o_scale, o_zero = _olive(cols, fmt)
    assert scale.shape == o_scale.shape == (cols.shape[0], 1) and zero.dtype == o_zero.dtype == torch.int32
    assert torch.equal(zero, o_zero)  # the range shrinks about 0: the zero point stays Olive's
    err, o_err = _error(cols, scale, zero, bits), _error(cols, o_scale, o_zero, bits)
    assert bool((err <= o_err).all())
    kept = (scale == o_scale).flatten()
    assert torch.equal(err[kept], o_err[kept])  # Olive's scale bit for bit where nothing rounds better
    assert bool((scale <= o_scale).all()) and bool((err[~kept] < o_err[~kept]).all())
    clipped = float((~kept).float().mean())
    # 8 bits round finely enough that a range 5 % shorter is never better on these rows (measured: 0 of 6,208)
    assert (0.1 < clipped < 1.0) if bits < 8 else clipped == 0.0, clipped
    assert torch.equal(scale[-8:], o_scale[-8:])  # an all-zero group: Olive's stand-in range


def test_gptq_with_searched_groups_has_less_output_error_where_weights_have_outliers():
    """One linear layer, Student-t weights (as trained ones: heavy tails) and correlated activations: the
    layer's output error |(W - Q) X| after GPTQ with searched groups is below that with min/max groups."""
    import torch

    from edgeqwen.compiler.gptq.options import ModuleFormat
    from edgeqwen.compiler.gptq.own_solve import inverse_factor, solve

    torch.manual_seed(0)
    n, k, tokens = 256, 512, 2048
    weight = torch.distributions.StudentT(4.0).sample((n, k)) * 0.02  # [N, K]
    mix = torch.randn(k, k) / k ** 0.5 + torch.eye(k)
    x = torch.randn(tokens, k) @ mix  # [T, K]
    h = 2 / tokens * x.t() @ x  # [K, K], Olive's scaling
    fmt = ModuleFormat(4, False, 128)
    errors = {}
    for searched in (False, True):
        q, scales, zeros = solve(weight, inverse_factor(h.clone(), 0.01, False), fmt, clip_search=searched)
        assert scales.shape == zeros.shape == (n, k // 128)
        errors[searched] = float(((x @ (weight - q).t()) ** 2).mean())
    assert errors[True] < 0.97 * errors[False], errors  # measured 0.91-0.93 over 4 seeds, t(4) or Gaussian weights


def test_the_clip_search_option_is_checked_with_the_profile():
    from edgeqwen.errors import ProfileError
    from edgeqwen.profile_passes import step_clip_search

    assert step_clip_search("Gptq", {}) is False
    assert step_clip_search("Gptq", {"clip_search": True}) is True
    assert step_clip_search("Gptq", {"clip_search": False, "arithmetic": "olive"}) is False
    with pytest.raises(ProfileError, match="clip_search must be true or false, not 'yes'"):
        step_clip_search("Gptq", {"clip_search": "yes"})
    for other in ({"arithmetic": "olive"}, {"implementation": "olive"}):
        with pytest.raises(ProfileError, match="needs the layer-wise Gptq's own arithmetic"):
            step_clip_search("Gptq", {"clip_search": True, **other})
    with pytest.raises(ProfileError, match="needs the layer-wise Gptq's own arithmetic"):
        step_clip_search("Rtn", {"clip_search": True})


def test_the_profiles_that_run_gptq_search_their_groups_and_say_so():
    """cpu-int4 and android-cpu-int4 turn it on; the manifest's pass record names it."""
    from edgeqwen.compiler.torch_quant import TorchQuantStep, describe
    from edgeqwen.targets import load_profile

    for name in ("cpu-int4", "android-cpu-int4"):
        gptq = next(p for p in load_profile(name).olive_passes if p.type == "Gptq")
        assert gptq.options["clip_search"] is True
        assert "clip_search" in describe(TorchQuantStep("Gptq", gptq.options))
    assert "clip_search" not in describe(TorchQuantStep("Gptq", {"bits": 4}))
