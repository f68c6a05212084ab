"""Qwen3.5 (hybrid Gated DeltaNet + gated attention) built, validated and run.

Tier 2: tiny checkpoints from the published configs (tied 0.8B-like, untied 27B-like with two value heads
per key head), built by the streaming exporter and checked against transformers (its own pure-PyTorch
delta rule); the runtime's fixed states against fresh runs. The int profiles' parity builds are slow.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeqwen.artifact import read_manifest, runtime_spec

SLOW = pytest.mark.slow


def _validated(manifest: dict) -> None:
    v = manifest["validation"]
    assert v["passed"] and not v["failures"], v
    for prompt in v["prompts"]:
        assert prompt["top1_agreement"] == 1.0 and prompt["greedy_match"] == prompt["greedy_tokens"] == 48, prompt


@pytest.mark.parametrize("name", ["tiny-qwen3.5", pytest.param("tiny-qwen3.5-untied", marks=SLOW)])
def test_fp32_build_matches_transformers(artifacts, name):
    """top-1 100 %, greedy 48/48 on every prompt, max |dlogit| within the fp32 profile's bound; the runtime
    contract gives every linear-attention layer its fixed state and every 4th layer a KV cache."""
    built = artifacts(name, "cpu-fp32")
    manifest = read_manifest(built.folder)
    _validated(manifest)
    rt = runtime_spec(manifest)
    assert rt.backend == "batched" and not rt.truncatable and rt.family == "qwen3_5"
    kinds = [layer.kind for layer in rt.layers]
    assert kinds == (["fixed"] * 3 + ["kv"]) * (len(kinds) // 4)
    conv, recurrent = rt.layers[0].tensors
    assert conv.shape[0] == recurrent.shape[0] == "batch" and len(recurrent.shape) == 4
    assert manifest["quantization"]["embedding"]["shared_with_lm_head"] is (name == "tiny-qwen3.5")


@pytest.mark.slow
@pytest.mark.parametrize("name, target", [("tiny-qwen3.5", "cpu-int8"), ("tiny-qwen3.5-untied", "cpu-int4-fast"),
                                          ("tiny-qwen3.5", "android-cpu-int4-fast"), ("tiny-qwen3.5", "cpu-int4")])
def test_int_profiles_pass_the_parity_gate(artifacts, name, target):
    """Quantised builds: transformers computing with the artifact's own weights agrees with the artifact
    (the parity gate), and the quantised weights read back are within one step of the checkpoint's (GPTQ's:
    exactly the values it chose). Each profile once, the two fixtures alternating (every pair, and
    android-cpu-int4, passed when built by hand)."""
    manifest = read_manifest(artifacts(name, target).folder)
    _validated(manifest)
    assert manifest["validation"]["reference"] == "Reference with the artifact's weights"
    matmuls = sum(w["count"] for w in manifest["quantization"]["weight_ops"] if w["op"] == "MatMulNBits")
    assert matmuls >= 21 and manifest["quantization"]["float_weight_matmuls"] == 0, manifest["quantization"]


OLIVE_GPTQ = """name = "olive-gptq"
description = "cpu-int4 with Olive's own Gptq pass"
device = "cpu"
execution_provider = "cpu"
precision = "int4"
backend = "genai"
[[olive_passes]]
type = "Gptq"
implementation = "olive"
[[olive_passes]]
type = "ModelBuilder"
precision = "fp32"
"""


@pytest.mark.parametrize("target, why", [
    ("olive-gptq", "Olive's own Gptq pass does not know its Gated DeltaNet layers"),
    ("directml-int4", "have CPU kernels only (none for dml)"),
    ("android-nnapi", "have CPU kernels only (none for nnapi)")])
def test_profiles_the_hybrid_cannot_run_on_are_refused_in_one_line(checkpoints, tmp_path, target, why):
    if target == "olive-gptq":
        target = str(tmp_path / "olive-gptq.toml")
        (tmp_path / "olive-gptq.toml").write_text(OLIVE_GPTQ)
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(checkpoints("tiny-qwen3.5")), "--target",
                        target, "--out", str(tmp_path / "art")], capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeqwen: error:")]
    assert r.returncode != 0 and len(errors) == 1 and why in errors[0], r.stderr
    assert "Traceback" not in r.stderr and "cpu-int4-fast" in errors[0]
    assert not (tmp_path / "art").exists()


def test_rewind_and_edit_give_a_fresh_runs_logits(artifacts):
    """A fixed state cannot be cut back: going back restores a snapshot and re-runs the rest. Appending a
    turn, editing the last answer, and rewinding to a position between snapshots all give the logits a
    fresh run of the resulting tokens gives."""
    from edgeqwen.runtime.engine import Engine

    backend = Engine(artifacts("tiny-qwen3.5", "cpu-fp32").folder).backend
    rng = np.random.default_rng(0)
    prompt, answer, edited, turn = (rng.integers(0, 240_000, size=n).tolist() for n in (30, 12, 9, 7))

    def fresh(ids: list[int]) -> np.ndarray:
        return backend.teacher_forced_logits(ids, len(ids))[0]

    state = backend.new_state(128)
    try:
        state.append(prompt)
        boundary = state.snapshot(kv=False)  # where the prompt ends: a turn boundary
        for t in answer:
            state.append([t])
        got = state.append(turn)
        np.testing.assert_allclose(got, fresh(prompt + answer + turn), rtol=1e-5, atol=1e-5)
        # the answer edited: back to the boundary, then the new answer and turn
        state.restore(boundary)
        assert state.tokens == prompt
        got = state.append(edited + turn)
        np.testing.assert_allclose(got, fresh(prompt + edited + turn), rtol=1e-5, atol=1e-5)
        # rewind to a position between snapshots: the nearest one before it, then the rest re-run
        full = state.snapshot(kv=True)
        state.restore(boundary)
        got = state.append(edited[:4])
        np.testing.assert_allclose(got, fresh(prompt + edited[:4]), rtol=1e-5, atol=1e-5)
        # a full snapshot restores into another sequence's state
        other = backend.new_state(128)
        other.append(turn)
        other.restore(full)
        np.testing.assert_allclose(other.append([5]), fresh(prompt + edited + turn + [5]), rtol=1e-5, atol=1e-5)
        other.close()
    finally:
        state.close()


def test_chat_turns_reuse_the_state_and_match_fresh_runs(artifacts):
    """A multi-turn session on the hybrid state: each turn after the first restores the snapshot taken where
    the previous turn's assistant header started (the template re-renders the answer without its think
    block, so the history parts there) and feeds the answer and the new message; its greedy tokens are a
    fresh run's of the whole history."""
    from edgeqwen.runtime.engine import Engine

    engine = Engine(artifacts("tiny-qwen3.5", "cpu-fp32").folder)
    im_start = engine.runtime.special_tokens["im_start"]
    session = engine.session(think=False)
    try:
        header = 0  # where the previous prompt's assistant header started
        for text in ("Hello there, how are you today?", "And then?", "Why?"):
            ids = engine.encode(engine.render(session.messages + [{"role": "user", "content": text}], False))
            turn = session.send(text, max_new_tokens=6, temperature=0).finish()
            fresh = engine.chat(session.messages[:-1], max_new_tokens=6, temperature=0, think=False).finish()
            assert turn.token_ids == fresh.token_ids
            assert turn.metrics.cached_tokens == header, (turn.metrics, header)
            header = max(i for i, t in enumerate(ids) if t == im_start)
            assert header > 10
    finally:
        session.close()


@pytest.mark.slow  # its own cpu-int4-fast build
def test_run_prints_a_continuation(artifacts):
    folder = artifacts("tiny-qwen3.5", "cpu-int4-fast").folder
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(folder), "The capital of France is",
                        "--max-new-tokens", "12", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["metrics"]["generated_tokens"] == 12 and len(set(out["token_ids"])) > 3, out


def _run_graph(session, feeds: dict, rt) -> tuple[np.ndarray, dict]:
    """One run of the artifact's graph: (last-position logits [V], every state output by input name)."""
    outs = [t.output for layer in rt.layers for t in layer.tensors]
    got = session.run(["logits", *outs], feeds)
    states = {t.input: v for t, v in zip((t for layer in rt.layers for t in layer.tensors), got[1:])}
    return got[0][0, -1], states


def test_the_decoder_takes_vision_features_and_3_axis_positions_as_transformers_does(artifacts, checkpoints):
    """What a vision encoder will feed the same decoder graph: a prompt with an image's placeholder tokens
    (a 2 x 3 grid after merging), its features written over them, and mRoPE positions from transformers'
    own get_rope_index (h and w spread over the image, text after it at the compressed offset); then one
    decode step. The graph's logits agree with transformers' ConditionalGeneration given the same
    inputs_embeds and position_ids, within the fp32 profile's bound; features of zero rows leave the token
    embeddings alone. The runtime section names both inputs."""
    import onnxruntime as ort
    import torch
    from transformers import Qwen3_5ForConditionalGeneration

    from edgeqwen.targets import load_profile

    folder = artifacts("tiny-qwen3.5", "cpu-fp32").folder
    rt = runtime_spec(read_manifest(folder))
    assert rt.positions == "mrope" and rt.visual_input is not None
    model = Qwen3_5ForConditionalGeneration.from_pretrained(checkpoints("tiny-qwen3.5"), dtype=torch.float32).eval()
    cfg, hidden = model.config, rt.visual_input.hidden
    assert set(rt.visual_input.placeholder_ids) == {cfg.image_token_id, cfg.video_token_id}
    rng = np.random.default_rng(3)
    text = rng.integers(0, 240_000, size=5).tolist()
    ids = text + [cfg.vision_start_token_id] + [cfg.image_token_id] * 6 + [cfg.vision_end_token_id] + text[:4]
    kinds = [1 if t == cfg.image_token_id else 0 for t in ids]
    ids_t = torch.tensor([ids])
    positions, _ = model.model.get_rope_index(ids_t, torch.tensor([kinds]), image_grid_thw=torch.tensor([[1, 4, 6]]))
    assert len({tuple(p) for p in positions[:, 0].T.tolist() if len(set(p)) > 1}) >= 4  # the axes do differ
    features = torch.from_numpy(rng.normal(0, 1, size=(6, hidden)).astype(np.float32))
    nxt = int(rng.integers(0, 240_000))
    step = positions.max().item() + 1  # the next text token: all three axes one past the largest position

    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.tensor([ids + [nxt]]))
        mask = (torch.tensor([ids + [nxt]]) == cfg.image_token_id)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, features)
        pos = torch.cat([positions, torch.full((3, 1, 1), step)], dim=2)
        ref = model(inputs_embeds=embeds, position_ids=pos).logits[0, -2:].numpy()

    session = ort.InferenceSession(str(folder / rt.model_file), providers=["CPUExecutionProvider"])
    zeros = {t.input: np.zeros(t.concrete(1, 0), np.float32) for layer in rt.layers for t in layer.tensors}
    n = len(ids)
    first, states = _run_graph(session, {"input_ids": ids_t.numpy(), "attention_mask": np.ones((1, n), np.int64),
                                         "position_ids": positions.numpy(), "visual_embeds": features.numpy(),
                                         **zeros}, rt)
    second, _ = _run_graph(session, {"input_ids": np.array([[nxt]]), "attention_mask": np.ones((1, n + 1), np.int64),
                                     "position_ids": np.full((3, 1, 1), step), "visual_embeds": rt.visual_input.empty(),
                                     **states}, rt)
    bound = load_profile("cpu-fp32").validation.max_abs_logit_diff  # measured: 6.6e-6; one axis for all, 1.8e-3
    assert np.abs(first - ref[0]).max() <= bound and np.abs(second - ref[1]).max() <= bound
    # the features matter (not a graph that ignores them), and zero rows leave the placeholders' own embedding
    plain, _ = _run_graph(session, {"input_ids": ids_t.numpy(), "attention_mask": np.ones((1, n), np.int64),
                                    "position_ids": positions.numpy(), "visual_embeds": rt.visual_input.empty(),
                                    **zeros}, rt)
    with torch.no_grad():
        text_only = model(input_ids=ids_t, position_ids=positions).logits[0, -1].numpy()
    assert np.abs(plain - text_only).max() <= bound < np.abs(plain - first).max()


@pytest.mark.parametrize("sections", [(11, 11, 10), (2, 2, 4), (3, 3, 2)])
def test_each_rotary_pair_reads_the_axis_transformers_recomposes_it_from(sections):
    """The graph's axis of each rotary pair is transformers' own interleaved recomposition (Qwen3.5's
    rotary module), for the published sections and the fixtures' smaller ones."""
    import torch
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextRotaryEmbedding

    from edgeqwen.compiler.export.hybrid import pair_axes

    pairs = sum(sections)
    rotary = Qwen3_5TextRotaryEmbedding.__new__(Qwen3_5TextRotaryEmbedding)
    rotary.mrope_section = list(sections)
    freqs = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, pairs).clone()  # axis a's entries hold a
    recomposed = rotary.recomposition_frequencies(freqs)[0, 0, :pairs]
    assert recomposed.long().tolist() == pair_axes(sections, pairs).tolist()
