"""Runtime pieces on their own: sampling, detokenisation, stop strings, thinking routing, threads."""

import numpy as np
import pytest

from edgeqwen.runtime.chat import ThinkingState
from edgeqwen.runtime.detok import IncrementalDecoder
from edgeqwen.runtime.sampling import Sampler, SamplingParams
from edgeqwen.runtime.stops import StopStrings
from edgeqwen.runtime.threads import resolve_threads, usable_cores


def test_greedy_and_degenerate_sampling_pick_the_argmax():
    logits = np.array([0.1, 2.0, -1.0, 1.9], np.float32)
    assert Sampler(SamplingParams())(logits, []) == 1
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0))(logits, []) == 1
    assert Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=0))(logits, []) == 1


def test_repetition_penalty_as_transformers_applies_it():
    # seen positive logits are divided, seen negative ones multiplied: 2.0/2 = 1.0 < 1.9 -> id 3 wins
    logits = np.array([0.1, 2.0, -1.0, 1.9], np.float32)
    assert Sampler(SamplingParams(repetition_penalty=2.0))(logits, [1]) == 3
    assert Sampler(SamplingParams(repetition_penalty=2.0))(logits, [2]) == 1


def test_sampling_follows_the_tempered_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float64)).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, seed=123))
    draws = np.bincount([s(logits, []) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(draws, [0.5, 0.3, 0.2], atol=0.03)  # 3 sigma at n=6000 is ~0.02
    # top_p = 0.75 keeps {0.5, 0.3} (the token crossing the mass is kept), renormalised to 5/8, 3/8
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.75, seed=1))
    draws = np.bincount([s(logits, []) for _ in range(6000)], minlength=3) / 6000
    assert draws[2] == 0
    np.testing.assert_allclose(draws[:2], [0.625, 0.375], atol=0.03)


def test_same_seed_same_draws():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    p = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=7)
    s1, s2, s3 = Sampler(p), Sampler(p), Sampler(SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=8))
    first = [s1(logits, []) for _ in range(20)]
    assert first == [s2(logits, []) for _ in range(20)]
    assert first != [s3(logits, []) for _ in range(20)]


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(repetition_penalty=0)])
def test_bad_sampling_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_incremental_decoder_never_splits_a_character(checkpoints):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoints("tiny-qwen2.5") / "tokenizer.json"))
    text = "Grüße 你好，世界 🌍😀👩‍👩‍👧 done"
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())  # emoji and CJK take several byte-level tokens
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_strings_hold_back_and_cut():
    s = StopStrings(["</end>", "STOP"])
    out = [s.feed(t) for t in ["Hello </", "en", "d> more"]]
    assert out == ["Hello ", "", ""] and s.hit == "</end>"
    s = StopStrings(["STOP"])
    assert s.feed("go ST") == "go " and s.feed("ART") == "START" and s.flush() == ""
    s = StopStrings(["STOP"])
    assert s.feed("a S") == "a " and s.flush() == "S"  # held text is released at the end


def test_thinking_routing():
    t = ThinkingState(think_start=10, think_end=11)
    assert [t.route(i) for i in [10, 1, 2, 11, 3]] == [None, "reasoning", "reasoning", None, "content"]
    assert t.reasoning_tokens == 2 and t.closed
    t = ThinkingState(think_start=10, think_end=11)
    assert [t.route(i) for i in [1, 11]] == ["content", "content"]  # a stray </think> is just text


def test_threads_follow_affinity_and_can_be_overridden(monkeypatch):
    import os

    assert usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert resolve_threads("auto") == 1
    assert resolve_threads(3) == 3
    with pytest.raises(ValueError):
        resolve_threads(-2)


def test_every_registered_backend_implements_the_protocol():
    import importlib
    import inspect

    from edgeqwen.runtime import backends

    protocol = {name for name, _ in inspect.getmembers(backends.Backend, inspect.isfunction) if not name.startswith("_")}
    assert protocol == {"new_state", "teacher_forced_logits", "greedy"}
    for name in backends.known_backends():
        module, cls = backends._BACKENDS[name].split(":")
        impl = getattr(importlib.import_module(module), cls)
        for method in protocol | {"__init__"}:
            want = list(inspect.signature(getattr(backends.Backend, method)).parameters)
            got = list(inspect.signature(getattr(impl, method)).parameters)
            assert got == want, f"{name}.{method}{got} differs from the Protocol's {want}"
