"""Checkpoints shaped like the published ones: every fixture's config files are Qwen's published files with
only the sizes changed, and those checkpoints (and the same re-saved by transformers 5, which writes
``"pad_token_id": null``) build, validate and run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeqwen.model.published import published_config, published_generation_config, published_models
from edgeqwen.testmodels.fixtures import (FIXTURES, SIZE_KEYS, config_dict, generation_config_dict,
                                          published, resave_with_transformers)

# fixture -> the published model it starts from: one of each published config, Qwen2.5 and Qwen3, tied and untied
MIRRORS = {"tiny-qwen2.5": "Qwen2.5-0.5B-Instruct", "tiny-qwen2": "Qwen2.5-7B-Instruct",
           "tiny-qwen2.5-coder": "Qwen2.5-Coder-1.5B-Instruct", "tiny-qwen2.5-math": "Qwen2.5-Math-1.5B-Instruct",
           "tiny-qwen3-tied": "Qwen3-0.6B", "tiny-qwen3": "Qwen3-8B"}
# Qwen3.5 (tied 0.8B, untied 27B): no generation_config.json of theirs was found, so their fixtures ship none;
# built by tests/test_qwen35_build.py
QWEN35_MIRRORS = {"tiny-qwen3.5": "Qwen3.5-0.8B", "tiny-qwen3.5-untied": "Qwen3.5-27B"}
# the ones other tests build anyway (shared artifacts): checked in the quick tier at no extra cost
SHARED = {"tiny-qwen2.5", "tiny-qwen3"}


def test_every_published_model_is_mirrored_by_a_fixture():
    """Every buildable architecture x tying among the stored configs starts a fixture, from a model whose
    generation_config.json is stored too (the others feed the planner's catalogue: tests/test_plan.py)."""
    from edgeqwen.model.spec import parse_spec

    def kind(model: str) -> tuple[str, bool]:
        s = parse_spec(published_config(model))
        return s.architecture, s.tied

    # every stored config parses, and its layers are built
    kinds = {kind(m) for m in published_models() if not parse_spec(published_config(m)).unbuilt_kinds()}
    assert all(published_generation_config(m) is not None for m in MIRRORS.values())
    assert {kind(m) for m in (MIRRORS | QWEN35_MIRRORS).values()} == kinds
    assert all(FIXTURES[f].published == m for f, m in (MIRRORS | QWEN35_MIRRORS).items())
    # what made the pad bug invisible: Qwen's own config.json files have no pad_token_id at all
    assert all("pad_token_id" not in published(m)[0] for m in MIRRORS.values())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_configs_are_the_published_ones_but_for_sizes(name):
    spec = FIXTURES[name]
    base, gen = published(spec.published)
    cfg = config_dict(spec, "bfloat16")
    assert set(cfg) - {"rope_scaling"} == set(base) - {"rope_scaling"}  # the same keys, the same missing keys
    changed = _changed(cfg, base)
    assert changed <= set(SIZE_KEYS) | ({"rope_scaling"} if spec.rope_scaling else set()), \
        changed
    assert generation_config_dict(spec) == (gen or {})


def _changed(cfg: dict, base: dict) -> set[str]:
    """The keys whose values differ, looking inside nested configs (Qwen3.5's text_config, vision_config),
    which must keep the published keys too."""
    out = set()
    for k in cfg:
        if isinstance(cfg[k], dict) and isinstance(base.get(k), dict) and k != "rope_scaling":
            assert set(cfg[k]) == set(base[k]), k
            out |= _changed(cfg[k], base[k])
        elif cfg[k] != base.get(k):
            out.add(k)
    return out


@pytest.mark.parametrize("target", ["cpu-fp32", "cpu-int4"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in SHARED else pytest.mark.slow) for n in MIRRORS])
def test_published_config_fixture_builds_validates_and_runs(artifacts, name, target):
    from edgeqwen.runtime import load

    result = artifacts(name, target)
    v = result.manifest["validation"]
    assert v["passed"], v["failures"]
    assert v["summary"]["top1_agreement"] == 1.0 and v["summary"]["max_abs_logit_diff"] < 1e-3
    rt = result.manifest["runtime"]
    assert rt["pad_token_id"] == 151643  # from generation_config.json: config.json has none
    engine = load(result.folder)
    assert len(engine.generate("Hello", max_new_tokens=4, temperature=0).token_ids) == 4


@pytest.fixture(scope="session")
def resaved(checkpoints, tmp_path_factory):
    """resaved(fixture) -> the fixture loaded and saved again by transformers 5."""
    root = tmp_path_factory.mktemp("resaved")
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = resave_with_transformers(checkpoints(name), root / name)
        return made[name]

    return get


def _resaved_cases():
    """Every mirror for cpu-fp32 (tiny-qwen2.5 in the quick tier); cpu-int4 (GPTQ) for one of each family."""
    for n in MIRRORS:
        yield pytest.param(n, "cpu-fp32", marks=() if n == "tiny-qwen2.5" else pytest.mark.slow)
    for n in ("tiny-qwen2.5", "tiny-qwen3"):
        yield pytest.param(n, "cpu-int4", marks=pytest.mark.slow)


@pytest.mark.parametrize("name, target", list(_resaved_cases()))
def test_resaved_by_transformers_5_builds_validates_and_runs(resaved, tmp_path, name, target):
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.runtime import load

    ckpt = resaved(name)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert "pad_token_id" in cfg and cfg["pad_token_id"] is None  # what transformers 5 writes
    result = build(str(ckpt), target, tmp_path / "art", quiet=True, loss_text=False)
    v = result.manifest["validation"]
    assert v["passed"], v["failures"]
    assert result.manifest["runtime"]["pad_token_id"] == 151643
    assert len(load(result.folder).generate("Hello", max_new_tokens=4, temperature=0).token_ids) == 4


def test_an_unvalidated_build_of_a_resaved_checkpoint_runs(resaved, tmp_path):
    """The worst failure this once was: `build --no-validate` published an artifact `run` then refused."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgeqwen.cli", *map(str, args)], capture_output=True, text=True)

    r = cli("build", resaved("tiny-qwen2.5"), "-t", "cpu-int4", "--no-validate", "-o", tmp_path / "art", "-q")
    assert r.returncode == 0, r.stderr
    r = cli("run", tmp_path / "art", "Hello", "--max-new-tokens", "3", "--json", "--temperature", "0")
    assert r.returncode == 0 and json.loads(r.stdout)["metrics"]["generated_tokens"] == 3, r.stderr
