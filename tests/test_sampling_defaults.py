"""The model's own sampling defaults: recorded at build from generation_config.json, started from by the
runtime, `edgeqwen run`, `edgeqwen chat` and `serve`; each flag or request field overrides one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeqwen.artifact import SamplingDefaults
from edgeqwen.model.generation import generation_settings, sampling_defaults
from edgeqwen.runtime.sampling import Sampler, SamplingParams

# Qwen2.5-0.5B-Instruct's published generation_config.json (tiny-qwen2.5 starts from it)
Q25 = dict(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, repetition_penalty=1.1, presence_penalty=0.0)
QWEN3_THINKING = dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0)
QWEN3_NON_THINKING = dict(QWEN3_THINKING, temperature=0.7, top_p=0.8)


def knobs(d) -> dict:
    d = d if isinstance(d, dict) else d.__dict__
    return {k: d[k] for k in Q25}


# -- tier 1: the reader and the sampler -------------------------------------------------------------------


def test_generation_config_reads_as_transformers_would():
    assert sampling_defaults({}).temperature == 0  # no file: greedy
    greedy = sampling_defaults({"do_sample": False, "temperature": 0.7, "repetition_penalty": 1.2})
    assert (greedy.temperature, greedy.repetition_penalty) == (0.0, 1.2)  # do_sample false: greedy, penalty kept
    bare = sampling_defaults({"do_sample": True})
    assert (bare.temperature, bare.top_k, bare.top_p) == (1.0, 50, 1.0)  # transformers' own fallbacks
    # pad: generation_config, then config, then the first end token; absent and null are the same
    for cfg in ({"eos_token_id": 151645}, {"eos_token_id": 151645, "pad_token_id": None}):
        g = generation_settings(cfg, {"eos_token_id": [151645, 151643]}, "qwen2", False)
        assert (g.pad_token_id, g.pad_source, g.eos_token_ids) == (151645, "first end token", (151645, 151643))
        assert generation_settings(cfg, {"pad_token_id": 151643}, "qwen2", False).pad_token_id == 151643
    assert generation_settings({}, {}, "qwen2", False).pad_token_id is None


def test_qwen3_has_the_model_cards_non_thinking_setting_only_with_qwens_own_values():
    card = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
    g = generation_settings({}, card, "qwen3", True)
    assert knobs(g.sampling) == QWEN3_THINKING and knobs(g.sampling_non_thinking) == QWEN3_NON_THINKING
    # a fine-tune that chose its own sampling keeps it in both modes; Qwen2 has no thinking mode
    assert generation_settings({}, {**card, "temperature": 0.3}, "qwen3", True).sampling_non_thinking is None
    assert generation_settings({}, card, "qwen2", False).sampling_non_thinking is None


def test_min_p_keeps_tokens_within_a_fraction_of_the_top_one():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, min_p=0.25, seed=0))  # keeps p >= 0.125: the first three
    draws = np.bincount([s(logits, []) for _ in range(6000)], minlength=4) / 6000
    assert draws[3] == 0
    np.testing.assert_allclose(draws[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.03)


def test_presence_penalty_applies_once_to_generated_tokens_only():
    logits = np.array([2.0, 1.5, 0.0], np.float32)
    p = SamplingParams(presence_penalty=1.0)  # greedy, penalised
    assert Sampler(p)(logits, [0], generated=[0]) == 1  # 2.0 - 1 < 1.5
    assert Sampler(p)(logits, [0, 0, 0], generated=[0, 0, 0]) == 1  # once, not per occurrence: 1.0 < 1.5
    assert Sampler(p)(logits, [0], generated=[]) == 0  # in the prompt only: no penalty (vLLM's rule)


@pytest.mark.parametrize("bad", [dict(min_p=1.5), dict(min_p=-0.1), dict(presence_penalty=3)])
def test_bad_new_sampling_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# -- tier 2: built artifacts ---------------------------------------------------------------------------


def test_the_manifest_records_the_checkpoints_defaults(artifacts):
    q25 = artifacts("tiny-qwen2.5", "cpu-fp32").manifest["runtime"]
    assert knobs(q25["sampling"]) == Q25 and "sampling_non_thinking" not in q25
    assert q25["sampling"]["source"] == "generation_config.json"
    q3 = artifacts("tiny-qwen3", "cpu-fp32").manifest["runtime"]
    assert knobs(q3["sampling"]) == QWEN3_THINKING and knobs(q3["sampling_non_thinking"]) == QWEN3_NON_THINKING


def test_the_runtime_samples_with_the_models_values_and_a_keyword_overrides(artifacts):
    from edgeqwen.runtime import load

    engine = load(artifacts("tiny-qwen2.5", "cpu-fp32").folder)
    r = engine.generate("Hello", max_new_tokens=4, seed=1)
    assert knobs(r.sampling) == Q25  # what the Sampler was given (Result.sampling is the request's params)
    r = engine.generate("Hello", max_new_tokens=4, temperature=0, top_k=5)
    assert knobs(r.sampling) == dict(Q25, temperature=0.0, top_k=5)  # greedy; the penalty stays, as in transformers
    # sampled draws really differ from seed to seed, and the greedy one repeats
    drawn = {tuple(engine.generate("Hello", max_new_tokens=8, seed=s).token_ids) for s in range(4)}
    assert len(drawn) > 1
    greedy = [engine.generate("Hello", max_new_tokens=8, temperature=0).token_ids for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_chat_picks_the_mode_s_defaults(artifacts):
    from edgeqwen.runtime import load

    engine = load(artifacts("tiny-qwen3", "cpu-fp32").folder)
    msgs = [{"role": "user", "content": "hi"}]
    assert knobs(engine.chat(msgs, max_new_tokens=2).finish().sampling) == QWEN3_THINKING
    assert knobs(engine.chat(msgs, think=False, max_new_tokens=2).finish().sampling) == QWEN3_NON_THINKING
    session = engine.session(think=False)
    assert knobs(session.send("hi", max_new_tokens=2).finish().sampling) == QWEN3_NON_THINKING
    # a plain completion is not a chat turn: the generation_config's own values
    assert knobs(engine.generate("hi", max_new_tokens=2).sampling) == QWEN3_THINKING


def _run(folder, *flags):
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "Hello", "--max-new-tokens", "3",
                        "--json", *flags], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_edgeqwen_run_starts_from_the_defaults_and_flags_override(artifacts):
    folder = artifacts("tiny-qwen2.5", "cpu-fp32").folder
    assert knobs(_run(folder)["sampling"]) == Q25
    assert knobs(_run(folder, "--temperature", "0")["sampling"]) == dict(Q25, temperature=0.0)
    got = _run(folder, "--top-p", "0.5", "--top-k", "0", "--min-p", "0.1", "--repetition-penalty", "1",
               "--presence-penalty", "0.5")["sampling"]
    assert knobs(got) == dict(Q25, top_p=0.5, top_k=0, min_p=0.1, repetition_penalty=1.0, presence_penalty=0.5)


def test_inspect_shows_the_defaults(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "inspect", str(folder)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sampling defaults: temperature 0.6, top_p 0.95, top_k 20 (from generation_config.json)" in r.stdout
    assert "sampling with thinking off: temperature 0.7, top_p 0.8, top_k 20 (from Qwen3 model card" in r.stdout


def test_serve_fills_absent_fields_from_the_model_and_takes_vllms_extensions(artifacts, tmp_path):
    from serving import Served

    log = tmp_path / "requests.jsonl"
    q25, q3 = artifacts("tiny-qwen2.5", "cpu-fp32").folder, artifacts("tiny-qwen3", "cpu-fp32").folder
    s = Served([f"q25={q25}", f"q3={q3}"], log=log)
    try:
        c = s.client()
        hi = [{"role": "user", "content": "hi"}]
        ids = {"default": c.chat.completions.create(model="q25", messages=hi, max_tokens=3).id,
               "override": c.chat.completions.create(
                   model="q25", messages=hi, max_tokens=3, temperature=0.2, presence_penalty=0.5,
                   extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.0}).id,
               "completion": c.completions.create(model="q25", prompt="Hello", max_tokens=3).id,
               "think": c.chat.completions.create(model="q3", messages=hi, max_tokens=3).id,
               "no_think": c.chat.completions.create(model="q3", messages=hi, max_tokens=3,
                                                     extra_body={"chat_template_kwargs": {"enable_thinking": False}}).id}
        import openai

        with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
            c.chat.completions.create(model="q25", messages=hi, max_tokens=3, frequency_penalty=0.5)
    finally:
        assert s.stop() == 0
    used = {r["id"]: r["sampling"] for r in map(json.loads, log.read_text().splitlines()) if r.get("sampling")}
    assert knobs(used[ids["default"]]) == Q25 and knobs(used[ids["completion"]]) == Q25
    assert knobs(used[ids["override"]]) == dict(Q25, temperature=0.2, top_k=5, min_p=0.1, repetition_penalty=1.0,
                                                presence_penalty=0.5)
    assert knobs(used[ids["think"]]) == QWEN3_THINKING and knobs(used[ids["no_think"]]) == QWEN3_NON_THINKING


def test_samplingdefaults_describe():
    assert SamplingDefaults().describe() == "greedy"
    assert SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05).describe() == \
        "temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05"


def test_edgeqwen_chat_says_what_it_samples_with(artifacts):
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder

    def banner(*flags):
        r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "chat", str(folder), *flags], input="/exit\n",
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()[1]

    assert banner() == "sampling: temperature 0.6, top_p 0.95, top_k 20 (the model's defaults)"
    assert banner("--no-think") == "sampling: temperature 0.7, top_p 0.8, top_k 20 (the model's defaults)"
    assert banner("--temperature", "0") == "sampling: greedy (the model's defaults; temperature from the flags)"
