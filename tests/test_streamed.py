"""Large fixture shapes are written tensor by tensor (edgeqwen.testmodels.streamed): the result is a
checkpoint transformers loads, whose greedy output varies, written with memory that does not grow
with the model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from edgeqwen.testmodels.fixtures import FIXTURES, make_checkpoint
from edgeqwen.testmodels.streamed import plan_shards, tensor_table, to_bf16, write_weights

SMALL = {name: dataclasses.replace(FIXTURES[name], name=f"{name}-streamed", streamed=True)
         for name in ("tiny-qwen2", "tiny-qwen3-tied")}


def test_bf16_rounding_is_torchs():
    import torch

    x = np.random.default_rng(0).standard_normal(100_000, dtype=np.float32) * 10
    x[:4] = [1.00390625, 1.01171875, -3.0e-39, 65504.0]  # ties to even, a subnormal, a large value
    ours = to_bf16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert (ours == theirs).all()


def test_big_shapes_have_the_published_tensor_sizes():
    params = {name: sum(int(np.prod(s)) for _, s in tensor_table(FIXTURES[name]))
              for name in ("qwen2.5-1.5b-shape", "qwen2.5-7b-shape", "qwen3-8b-shape")}
    # Qwen's model cards: 1.54B, 7.61B, 8.19B parameters
    assert round(params["qwen2.5-1.5b-shape"] / 1e9, 2) == 1.54
    assert round(params["qwen2.5-7b-shape"] / 1e9, 2) == 7.62
    assert round(params["qwen3-8b-shape"] / 1e9, 2) == 8.19


@pytest.mark.parametrize("name", list(SMALL))
def test_streamed_checkpoint_loads_in_transformers_and_is_not_one_token(name, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgeqwen.compiler.checkpoint import open_checkpoint

    spec = SMALL[name]
    folder = make_checkpoint(spec.name, tmp_path / "ckpt", dtype="bfloat16", spec=spec)
    ckpt = open_checkpoint(str(folder))
    assert ckpt.dtype == "bfloat16" and ckpt.tied_embeddings == spec.tied
    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.tensor([[785, 3974, 13876, 38835]])
    out = model.generate(ids, max_new_tokens=40, do_sample=False, repetition_penalty=1.0,
                         attention_mask=torch.ones_like(ids))[0, 4:].tolist()
    assert len(set(out)) >= 20, out


def test_shards_hold_the_same_tensors_as_one_file(tmp_path):
    from safetensors.torch import load_file  # numpy has no bfloat16

    spec = SMALL["tiny-qwen2"]
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    write_weights(spec, tmp_path / "one")
    shard_bytes = 3 * 2**20
    write_weights(spec, tmp_path / "many", shard_bytes=shard_bytes)
    files = sorted((tmp_path / "many").glob("model-*.safetensors"))
    assert len(files) == len(plan_shards(tensor_table(spec), shard_bytes)) > 2
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    many = {k: v for f in files for k, v in load_file(str(f)).items()}
    assert set(index["weight_map"]) == set(one) == set(many)
    assert all(one[k].equal(many[k]) for k in one)


PEAK = """
import dataclasses, sys
from pathlib import Path
from edgeqwen.testmodels.fixtures import FIXTURES
from edgeqwen.testmodels.streamed import write_weights
spec = dataclasses.replace(FIXTURES["qwen2.5-0.5b-shape"], layers=int(sys.argv[2]), streamed=True)
total = write_weights(spec, Path(sys.argv[1]), shard_bytes=2**28)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(total, hwm // 1024)
"""


@pytest.mark.slow  # three writes in fresh interpreters (~10 s): the quick tier is at its 5-minute budget
def test_writing_memory_does_not_grow_with_the_model(tmp_path):
    """Peak RSS is numpy plus one 16 MB block and its temporaries, for a 0.4 GB and a 0.6 GB checkpoint
    alike (measured in the closing note of this change)."""
    peaks = {}
    for layers in (4, 12):
        out = tmp_path / f"l{layers}"
        out.mkdir()
        r = subprocess.run([sys.executable, "-c", PEAK, str(out), str(layers)], capture_output=True, text=True,
                           check=True)
        total, peak_mb = map(int, r.stdout.split())
        peaks[layers] = (total, peak_mb)
    (small, p4), (big, p12) = peaks[4], peaks[12]
    assert big > small * 1.4
    assert p12 - p4 < 16, peaks  # 8 more layers (240 MB more weights) cost no memory
    assert p12 < 250, peaks
