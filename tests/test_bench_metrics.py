"""KL and perplexity against examples computed by hand."""

import math

import numpy as np
import pytest

from edgeqwen.quality.metrics import kl_divergence, perplexity, quality_summary, token_nll


def test_kl_of_a_hand_computed_pair():
    # P = (0.5, 0.25, 0.25), Q = (0.25, 0.5, 0.25) as logits (log-probabilities plus a constant)
    p = np.log([[0.5, 0.25, 0.25]]) + 3.0
    q = np.log([[0.25, 0.5, 0.25]]) - 1.0
    # KL(P||Q) = 0.5 ln 2 + 0.25 ln 0.5 + 0 = 0.25 ln 2
    assert kl_divergence(p, q)[0] == pytest.approx(0.25 * math.log(2), abs=1e-12)
    assert kl_divergence(p, p)[0] == pytest.approx(0.0, abs=1e-15)


def test_perplexity_of_a_hand_computed_sequence():
    # two positions; the targets get probability 1/2 and 1/8: ppl = exp((ln 2 + ln 8) / 2) = 4
    logits = np.log([[0.5, 0.5, 1e-300], [0.125, 0.875, 1e-300]])
    nll = token_nll(logits, np.array([0, 0]))
    np.testing.assert_allclose(nll, [math.log(2), math.log(8)], rtol=1e-12)
    assert perplexity(nll) == pytest.approx(4.0, rel=1e-12)


def test_uniform_model_has_perplexity_equal_to_vocab():
    logits = np.zeros((5, 7))
    assert perplexity(token_nll(logits, np.arange(5))) == pytest.approx(7.0)


def test_summary():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 11))
    s = quality_summary(ref, ref + 1.0, rng.integers(0, 11, 50))  # a constant shift changes nothing
    assert s["kl_max"] == pytest.approx(0.0, abs=1e-12) and s["top1_agreement"] == 1.0
    assert s["perplexity"] == pytest.approx(s["reference_perplexity"])
    s = quality_summary(ref, ref + rng.standard_normal((50, 11)), rng.integers(0, 11, 50))
    assert 0 < s["kl_mean"] <= s["kl_p90"] <= s["kl_p99"] <= s["kl_max"]
