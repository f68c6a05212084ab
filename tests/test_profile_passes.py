"""One interpreter of a profile's passes (edgeqwen.profile_passes): the streaming exporter's weight writers and
the planner's byte counts are read from the same record, so a default or an option cannot mean one thing to
the build and another to `edgeqwen plan`. Tier 1: profiles only, no build (the byte counts against real builds
are in test_plan.py and test_streaming_export.py)."""

from __future__ import annotations

import pytest

from edgeqwen.compiler.export.plan import genai_plan
from edgeqwen.compiler.export.prequantized import PrequantizedWeights
from edgeqwen.compiler.export.weights import FloatWeights, NBitsWeights
from edgeqwen.errors import ProfileError
from edgeqwen.plan.storage import storage
from edgeqwen.profile_passes import read_passes
from edgeqwen.targets import TargetProfile, list_profiles

GENAI = [p for p in list_profiles() if p.backend == "genai"]


def _as_stored(w) -> tuple[int, int, bool]:
    """(bits, block, symmetric) a weight writer stores (a float writer: its float width, block 0)."""
    if isinstance(w, PrequantizedWeights):
        return w.config.bits, w.config.group_size, w.config.symmetric
    if isinstance(w, FloatWeights):
        return 8 * w.dtype.itemsize, 0, True
    assert isinstance(w, NBitsWeights), w
    return w.bits, w.block_size, w.symmetric


@pytest.mark.parametrize("profile", GENAI, ids=lambda p: p.name)
def test_the_exporter_and_the_planner_read_each_profile_alike(profile):
    plan, _ = genai_plan(profile)
    s = storage(profile)
    for role in ("weights", "lm_head"):
        mine = getattr(s, role)
        assert _as_stored(getattr(plan, role)) == (mine.bits, mine.block, mine.symmetric), role
    assert (plan.embedding is None) == (s.embedding is None) == (not plan.quantized_embedding)
    if plan.embedding is not None:
        assert _as_stored(plan.embedding) == (s.embedding.bits, s.embedding.block, s.embedding.symmetric)
    assert plan.prune_lm_head == s.prune_lm_head
    assert plan.io_dtype.itemsize == s.float_bytes


def _profile(passes: list[dict], ep: str = "cpu") -> TargetProfile:
    return TargetProfile.from_dict({"name": "t", "description": "test", "device": "cpu", "execution_provider": ep,
                                    "precision": "int4", "backend": "genai", "olive_passes": passes}, "t.toml")


def test_an_unset_option_takes_the_builders_default_in_both_readers():
    """prune_lm_head left out: Olive's ModelBuilder computes every position's logits, and so do the build and
    the planner's prefill cost (once two readers with different defaults)."""
    p = _profile([{"type": "ModelBuilder", "precision": "fp32"}])
    assert read_passes(p).prune_lm_head is False
    assert genai_plan(p)[0].prune_lm_head is False and storage(p).prune_lm_head is False


def test_torch_passes_format_is_the_one_olive_writes():
    """Olive's quantisation_config: the last PyTorch pass's bits/group/symmetry, every pass's overrides."""
    p = _profile([{"type": "Rtn", "bits": 4, "group_size": 64, "overrides": {"a": {"bits": 8}}},
                  {"type": "Gptq", "group_size": 256, "sym": True, "overrides": {"b": {"group_size": 32}}},
                  {"type": "ModelBuilder", "precision": "fp32", "extra_options": {"int4_accuracy_level": 4}}])
    r = read_passes(p)
    assert r.torch is not None and r.torch.config() == {"bits": 4, "group_size": 256, "symmetric": True,
                                                        "overrides": {"a": {"bits": 8}, "b": {"group_size": 32}}}
    assert (r.weights.bits, r.weights.block, r.weights.symmetric, r.weights.accuracy_level) == (4, 256, True, 4)
    assert r.layers == r.builder  # what layers the torch passes leave float are stored as


@pytest.mark.parametrize("passes,match", [
    ([{"type": "OnnxBlockWiseRtnQuantization"}], "starts with Olive's ModelBuilder"),
    ([{"type": "ModelBuilder", "precision": "int8"}], "precision 'int8'"),
    ([{"type": "ModelBuilder", "precision": "int4"}, {"type": "OnnxBlockWiseRtnQuantization"}],
     "cannot apply Olive pass OnnxBlockWiseRtnQuantization"),
    ([{"type": "ModelBuilder"}, {"type": "OnnxStaticQuantization"}], "cannot apply Olive pass OnnxStaticQuantization"),
    ([{"type": "Gptq", "lm_head": True}, {"type": "ModelBuilder"}], "set lm_head/embeds false"),
])
def test_what_the_stream_cannot_do_is_refused_in_one_line_by_both_readers(passes, match):
    p = _profile(passes)
    for read in (read_passes, genai_plan, storage):
        with pytest.raises(ProfileError, match=match) as e:
            read(p)
        assert "\n" not in str(e.value)
