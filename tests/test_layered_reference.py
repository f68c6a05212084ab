"""The layer-at-a-time fp32 reference computes exactly what the whole transformers model computes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeqwen.quality.layered import LayeredReference
from edgeqwen.quality.reference import Reference


@pytest.mark.parametrize("name, dtype", [
    pytest.param("tiny-qwen2", "float32", marks=pytest.mark.slow), ("tiny-qwen3", "float32"),
    pytest.param("tiny-qwen3-tied", "bfloat16", marks=pytest.mark.slow),
    pytest.param("tiny-qwen2.5-yarn", "float32", marks=pytest.mark.slow), ("tiny-qwen3.5-untied", "bfloat16")])
def test_same_logits_and_greedy_as_the_whole_model(checkpoints, name, dtype):
    path = checkpoints(name, dtype)
    whole, layered = Reference(path), LayeredReference(path)
    ids = whole.prompt_ids("code", "def fibonacci(n: int) -> list[int]:\n    result = [0, 1]\n")
    assert np.array_equal(whole.logits(ids), layered.logits(ids))  # measured: bit for bit
    assert whole.greedy(ids, 12) == layered.greedy(ids, 12)
    # several sequences in one pass (each layer loaded once): the same logits as one by one
    seqs = [ids, ids[:5], [785, 3974]]
    for a, b in zip(whole.logits_many(seqs), layered.logits_many(seqs)):
        assert np.array_equal(a, b)
    assert whole.prompt_ids("chat", "CHAT") == layered.prompt_ids("chat", "CHAT")


def test_it_holds_no_weights_between_calls(checkpoints):
    layered = LayeredReference(checkpoints("tiny-qwen3"))
    layered.logits([785, 3974])
    devices = {p.device.type for p in layered.model.parameters()}
    assert devices == {"meta"}
