"""The quantisation loss's built-in text and its chunked scoring (edgeqwen.quality.loss_text)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeqwen.quality.loss_text import CHUNK, chunks, loss_sequences
from edgeqwen.quality.metrics import kl_divergence, per_token, token_nll


@pytest.mark.parametrize("length", [2, 3, CHUNK, CHUNK + 1, CHUNK + 2, 2 * CHUNK + 7])
def test_chunks_score_every_position_once(length):
    """Position p predicts token p + 1, so 0 .. length - 2 are scored, each once, none past CHUNK wide."""
    ranges = chunks(length)
    covered = [p for a, b in ranges for p in range(a, b)]
    assert covered == list(range(length - 1))
    assert all(0 < b - a <= CHUNK for a, b in ranges)


@pytest.mark.parametrize("rows", [1, 5, 8, 13])
def test_per_token_is_the_whole_window_numbers(rows):
    """Blocked in-place scoring gives what kl_divergence and token_nll give on the whole window."""
    rng = np.random.default_rng(rows)
    ref = rng.standard_normal((rows, 4099), dtype=np.float32) * 4
    test = ref + rng.standard_normal((rows, 4099), dtype=np.float32) * 0.3
    targets = rng.integers(0, 4099, rows)
    got = per_token(ref, test, targets)
    np.testing.assert_allclose(got["kl"], kl_divergence(ref, test), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(got["nll_test"], token_nll(test, targets), rtol=1e-12)
    np.testing.assert_allclose(got["nll_ref"], token_nll(ref, targets), rtol=1e-12)
    assert (got["agree"] == (ref.argmax(-1) == test.argmax(-1))).all()
    assert (per_token(ref, ref, targets)["kl"] < 1e-12).all()


def test_built_in_text_is_english_chinese_code_and_a_chat_turn(checkpoints):
    """A few thousand tokens with the real Qwen vocabulary; the chat turn through the checkpoint's template."""
    from edgeqwen.quality.reference import load_tokenizer

    tok = load_tokenizer(checkpoints("tiny-qwen3"))
    seqs = dict(loss_sequences(tok, 100_000))
    assert list(seqs) == ["english", "chinese", "code", "chat"]
    assert 2_000 <= sum(len(ids) for ids in seqs.values()) <= 4_000
    assert all(len(ids) >= 250 for ids in seqs.values())
    chinese = tok.decode(seqs["chinese"])
    assert sum("\u4e00" <= c <= "\u9fff" for c in chinese) > 300
    assert "def " in tok.decode(seqs["code"])
    chat = tok.decode(seqs["chat"])
    assert chat.count("<|im_start|>") == 3 and "<|im_start|>assistant" in chat
    # cut to the artifact's context, never past it
    assert all(len(ids) <= 64 for _, ids in loss_sequences(tok, 64))


def test_int4_build_reports_the_loss_per_text_and_leaves_no_scratch(artifacts):
    result = artifacts("tiny-qwen3", "cpu-int4", loss_text=True)
    loss = result.manifest["validation"]["quantization_loss"]
    texts = {t["text"]: t for t in loss["texts"]}
    assert list(texts) == ["english", "chinese", "code", "chat"]
    assert sum(t["tokens"] for t in texts.values()) == loss["summary"]["tokens"] >= 2_000
    mean = sum(t["kl_mean"] * t["tokens"] for t in texts.values()) / loss["summary"]["tokens"]
    assert mean == pytest.approx(loss["summary"]["kl_mean"], rel=1e-9)
    # the artifact's logits of the whole text (GBs at this vocabulary) were scratch beside the artifact
    assert [p.name for p in result.folder.parent.iterdir() if "validation" in p.name] == []
    assert not any(p.name.endswith(".f32") for p in result.folder.rglob("*"))


def test_a_build_without_the_loss_text_says_so(artifacts):
    """Parity only: the loss is recorded as skipped (never silently absent) and the summary says it."""
    from edgeqwen.summary import format_manifest

    m = artifacts("tiny-qwen2", "cpu-int4-fast").manifest  # the shared artifacts skip it unless asked
    v = m["validation"]
    assert v["passed"] and v["quantization_loss"] == {"skipped": True, "failures": [],
                                                      "reason": "not scored (--no-loss-text): parity only"}
    assert "quantisation loss (against the fp32 checkpoint): not scored (--no-loss-text): parity only" in \
        format_manifest(m)


def test_a_kl_bound_without_the_loss_text_is_refused_before_building(checkpoints, tmp_path):
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.errors import ProfileError

    with pytest.raises(ProfileError, match="needs the quantisation loss"):
        build(str(checkpoints("tiny-qwen2.5")), "cpu-int4-fast", tmp_path / "art", quiet=True, loss_text=False,
              max_kl=0.5)
    assert not (tmp_path / "art").exists()


@pytest.mark.slow  # the quick tier is at its budget; the loss text's own tests above stay in it
def test_the_chunk_size_changes_no_logit_and_no_figure(artifacts, checkpoints, monkeypatch, tmp_path):
    """Both sides score in byte-bounded chunks (at Qwen3.5's 248,320-way vocabulary a 512-row chunk would be
    508 MB, beside the session or the reference): chunks of 16 rows give the logits and the loss figures
    chunks of 512 do, to float rounding (a chunk's first row comes from a prefill step, the others from
    decode steps)."""
    from edgeqwen.quality import loss_text
    from edgeqwen.quality.reference import Reference
    from edgeqwen.runtime.engine import Engine

    engine = Engine(artifacts("tiny-qwen3.5", "cpu-fp32").folder)
    reference = Reference(checkpoints("tiny-qwen3.5"))
    ids = engine.encode(loss_text._data("english.txt"))[:120]
    files, figures = {}, {}
    for rows in (512, 16):
        monkeypatch.setattr(loss_text, "BUFFER_BYTES", rows * 4 * engine.backend.vocab_size)
        assert loss_text.chunk_rows(engine.backend.vocab_size) == rows
        (tmp_path / str(rows)).mkdir()
        art = loss_text.run_artifact_loss(engine, [("english", ids)], tmp_path / str(rows), log=lambda line: None)
        files[rows] = art.rows("english", 0, len(ids) - 1)
        figures[rows] = loss_text.compare_loss(reference, art)["summary"]
    assert files[16].shape == (len(ids) - 1, engine.backend.vocab_size)
    np.testing.assert_allclose(files[16], files[512], rtol=0, atol=1e-4)
    assert (files[16].argmax(-1) == files[512].argmax(-1)).all()
    assert figures[16]["tokens"] == figures[512]["tokens"] == len(ids) - 1
    assert figures[16]["kl_mean"] == pytest.approx(figures[512]["kl_mean"], rel=1e-3, abs=1e-9)
    assert figures[16]["top1_agreement"] == figures[512]["top1_agreement"]
    assert figures[16]["reference_perplexity"] == pytest.approx(figures[512]["reference_perplexity"], rel=1e-6)
