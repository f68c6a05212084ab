"""The batched backend: sequences that join and leave one shared KV batch compute what they compute alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeqwen.runtime.engine import Engine


def _prompts(n: int) -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 150000, size=int(k)).tolist() for k in rng.integers(3, 40, size=n)]


@pytest.mark.parametrize("fixture,target", [("tiny-qwen3", "cpu-fp32"), ("tiny-qwen2.5", "cpu-int4")])
def test_one_sequence_equals_the_genai_backend(artifacts, fixture, target):
    folder = artifacts(fixture, target).folder
    genai, batched = Engine(folder).backend, Engine(folder, backend="batched").backend
    for ids in _prompts(3):
        cont = genai.greedy(ids, 12)
        assert batched.greedy(ids, 12) == cont
        # same onnxruntime kernels on the same graph: measured bit-identical
        np.testing.assert_array_equal(batched.teacher_forced_logits(ids + cont, len(ids)),
                                      genai.teacher_forced_logits(ids + cont, len(ids)))


def test_rows_joining_and_leaving_a_batch_compute_what_they_compute_alone(artifacts):
    # Prompts of different lengths finish at different steps, so rows leave (and the last row moves
    # into the hole) while others decode, and prompts prefill between decode steps. A batch of M rows
    # runs other GEMM blocking than one row, so fp32 sums round in another order: measured max |delta|
    # 4e-7 on logits of scale ~5 (1e-7 relative); the bound is 1e-5 of the logits' scale, far below a
    # wrong KV row or position (which moves logits by O(1)).
    backend = Engine(artifacts("tiny-qwen3", "cpu-fp32").folder, backend="batched").backend
    prompts = _prompts(6)
    conts = [backend.greedy(p, 8 + 3 * i) for i, p in enumerate(prompts)]
    alone = [backend.teacher_forced_logits(p + c, len(p)) for p, c in zip(prompts, conts)]
    steps0, rows0 = backend.steps, backend.rows_stepped
    together: list = [None] * len(prompts)

    def work(i: int) -> None:
        together[i] = backend.teacher_forced_logits(prompts[i] + conts[i], len(prompts[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for a, t in zip(alone, together):
        np.testing.assert_allclose(t, a, rtol=0, atol=1e-5 * np.abs(a).max())
    assert (backend.rows_stepped - rows0) / (backend.steps - steps0) > 1.5  # they really shared runs
    assert backend.rows == []  # every row given back


def test_more_sequences_than_slots_and_a_longer_context_than_the_first_buffer(artifacts):
    from edgeqwen.runtime.backends.batched import INITIAL

    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    genai, batched = Engine(folder).backend, Engine(folder, backend="batched").backend
    batched._regrow(2, 16)  # tiny buffers: both the slot count and the capacity must grow on demand
    idle = batched.new_state(1)  # a live row keeps the grown buffers until the end
    prompts = _prompts(5)
    out: list = [None] * 5

    def work(i: int) -> None:
        out[i] = batched.greedy(prompts[i], 30)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert out == [genai.greedy(p, 30) for p in prompts]
    assert batched.max_batch >= 6 - 2 and batched.capacity >= max(len(p) for p in prompts) + 30
    idle.close()  # the last row gone: the buffers shrink back
    assert (batched.max_batch, batched.capacity) == INITIAL


def test_a_session_on_the_batched_backend_equals_a_fresh_run(artifacts):
    # multi-turn chat rewinds the row where the template rewrites history
    engine = Engine(artifacts("tiny-qwen3", "cpu-fp32").folder, backend="batched")
    session = engine.session()
    for text in ("Hello there", "And then?", "Why?"):
        turn = session.send(text, max_new_tokens=6, temperature=0).finish()
        fresh = engine.chat(session.messages[:-1], max_new_tokens=6, temperature=0).finish()
        assert turn.token_ids == fresh.token_ids
    session.close()
    assert engine.backend.rows == []  # the session's row is given back


def test_an_error_reaches_the_caller_and_the_scheduler_lives_on(artifacts):
    engine = Engine(artifacts("tiny-qwen3", "cpu-fp32").folder, backend="batched")
    state = engine.backend.new_state(8)
    with pytest.raises(Exception, match="context length"):
        state.append(list(range(1000, 1000 + engine.context_length + 1)))
    state.close()
    assert len(engine.generate("Hello", max_new_tokens=4, temperature=0).token_ids) == 4


@pytest.mark.slow  # builds an NNAPI artifact of its own
def test_static_artifacts_are_refused_with_a_clear_message(artifacts):
    from edgeqwen.errors import ArtifactError

    with pytest.raises(ArtifactError, match="batched backend runs dynamic-shape graphs"):
        Engine(artifacts("tiny-qwen3", "android-nnapi").folder, backend="batched")


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(artifacts, monkeypatch):
    from edgeqwen.runtime.backends import batched as mod

    monkeypatch.setattr(mod, "PREFILL_CHUNK", 7)
    folder = artifacts("tiny-qwen3", "cpu-fp32").folder
    genai, engine = Engine(folder).backend, Engine(folder, backend="batched")
    long_prompt = list(range(2000, 2000 + 50))  # 8 chunks
    assert engine.backend.greedy(long_prompt, 10) == genai.greedy(long_prompt, 10)
    # while a row decodes, the long prompt's chunks take turns with its steps
    decoding = engine.backend.new_state(64)
    decoding.append([5, 6, 7])
    steps0 = engine.backend.steps
    out: list = []
    t = threading.Thread(target=lambda: out.append(engine.backend.greedy(long_prompt, 3)))
    t.start()
    for k in range(6):
        decoding.append([8 + k])
    t.join()
    decoding.close()
    assert out == [genai.greedy(long_prompt, 3)]
    assert engine.backend.steps > steps0


def test_a_dropped_engine_frees_its_session_and_scheduler(artifacts):
    """The scheduler thread holds its backend only while work is in flight: once nobody holds the engine, the
    backend (and its onnxruntime session) is freed and the thread ends. Validation relies on it: the
    artifact, its fp32-compute twin and the reference load one after another (a backend kept alive by its own
    thread once made a 9B validation hold all three: 15 GB)."""
    import gc
    import time
    import weakref

    engine = Engine(artifacts("tiny-qwen3", "cpu-fp32").folder, backend="batched")
    state = engine.backend.new_state(64)
    state.append([1, 2, 3])
    state.close()
    gone, thread = weakref.ref(engine.backend), engine.backend._thread
    del engine, state
    gc.collect()
    assert gone() is None
    thread.join(timeout=5)  # it notices within IDLE_CHECK_S
    assert not thread.is_alive()
