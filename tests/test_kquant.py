"""The data-free searched-scale int4 (edgeqwen.compiler.export.kquant): the bytes Olive's OnnxKQuantQuantization
writes, computed a slice of rows at a time; read back, shared as a tied table and checked by the weight check.

The whole-graph comparison with Olive's pass is tests/test_streaming_export.py (cpu-int4-fast: logits equal).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeqwen.compiler.export.kquant import CHUNK_VALUES, pack_zero_points, quantize_rows
from edgeqwen.errors import ProfileError

# (N, K, bits, block): K a whole number of blocks or not (padded), one block per row (Olive's layout quirk),
# 8 bits, and enough blocks to cross the search's chunk boundary
SHAPES = [(64, 200, 4, 32), (96, 448, 4, 64), (33, 128, 8, 64), (48, 64, 4, 128), (40, 96, 4, 32),
          (CHUNK_VALUES // 1024 + 37, 1024, 4, 32), (17, 896, 4, 128)]


def _weight(n: int, k: int, block: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    w[1, :min(k, block)] = 0.0  # a constant block: the refit divides by zero, the first guess stays
    w[2, :min(k, block)] = 0.01
    w[3, 5] = 0.5  # an outlier the weighted fit must hold on to
    return w


@pytest.mark.parametrize("n,k,bits,block", SHAPES)
def test_packs_what_olives_kquant_pass_packs(n, k, bits, block):
    from olive.passes.onnx.kquant_quantization import OnnxKQuantQuantization

    w = _weight(n, k, block)
    with np.errstate(divide="ignore", invalid="ignore"):
        packed, scales, zero = OnnxKQuantQuantization._kquant_block_quant(np.ascontiguousarray(w.T), bits, block)
    kb = -(-k // block)
    rows = np.zeros((n, kb * block), np.float32)
    rows[:, :k] = w
    ours = [quantize_rows(rows[a:b], bits, block) for a, b in ((0, n // 3), (n // 3, n))]  # any slice of rows
    assert np.array_equal(packed, np.concatenate([o[0] for o in ours]))
    assert np.array_equal(scales, np.concatenate([o[1] for o in ours]).reshape(-1))
    assert np.array_equal(zero, np.concatenate([pack_zero_points(o[2], bits) for o in ours]))


def test_a_kquant_pass_reads_as_its_roles(tmp_path):
    from edgeqwen.profile_passes import read_passes
    from edgeqwen.targets import load_profile

    p = read_passes(load_profile("cpu-int4-fast"))
    assert (p.layers.algorithm, p.layers.block, p.layers.symmetric) == ("kquant", 128, False)
    assert (p.lm_head.algorithm, p.lm_head.block) == ("kquant", 32)
    assert (p.embedding.algorithm, p.embedding.block, p.embedding.symmetric) == ("rtn", 64, True)
    text = (load_profile("cpu-int4-fast").source or "").strip()
    assert text  # the shipped file: a copy with a per-node setting on a layer is refused in one line
    src = open(text).read().replace('"/lm_head/MatMul" = {', '"/model/layers.0/mlp/down_proj/MatMul" = {')
    bad = tmp_path / "cpu-int4-fast.toml"
    bad.write_text(src)
    with pytest.raises(ProfileError) as e:
        read_passes(load_profile(str(bad)))
    assert "\n" not in str(e.value) and "--exporter olive" in str(e.value)


def _flip(folder, init_name: str, at: int) -> None:
    """Add one to the low nibble of byte ``at`` of an external initializer (a zero point off by one)."""
    import onnx

    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name == init_name)
    info = {e.key: e.value for e in t.external_data}
    with open(folder / info["location"], "r+b") as f:
        f.seek(int(info["offset"]) + at)
        b = f.read(1)[0]
        f.seek(int(info["offset"]) + at)
        f.write(bytes([(b & 0xF0) | (((b & 0x0F) + 1) & 0x0F)]))


@pytest.mark.parametrize("where", ["table", "layer"])
def test_a_zero_point_off_by_one_fails_the_weight_check(artifacts, checkpoints, tmp_path, where):
    """The graph check computes with the artifact's own weights, so it cannot see a zero point written wrong;
    the weight check must (asymmetric blocks: the codes round to nearest inside the block's own range)."""
    from edgeqwen.model.tensors import tensor_map
    from edgeqwen.quality.graph_weights import ArtifactWeights
    from edgeqwen.quality.weight_check import check_weights
    from edgeqwen.testmodels.fixtures import FIXTURES

    names = tensor_map(FIXTURES["tiny-qwen3-tied"].model_spec)
    good = artifacts("tiny-qwen3-tied", "cpu-int4-fast").folder
    manifest = json.loads((good / "edgeqwen.json").read_text())
    ckpt = checkpoints("tiny-qwen3-tied")
    clean = check_weights(ArtifactWeights(good, manifest, names), ckpt)
    assert clean.not_quantisations == [] and 0.45 < clean.max_error_steps <= 0.505
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    aw = ArtifactWeights(bad, manifest, names)
    tensor = names.embed if where == "table" else "model.layers.1.mlp.down_proj.weight"
    node = aw.where[tensor][0]
    _flip(bad, node.zero_points, 7)
    broken = check_weights(ArtifactWeights(bad, manifest, names), ckpt)
    assert [t.tensor for t in broken.not_quantisations] == [tensor]
    assert broken.not_quantisations[0].error_steps >= 0.9  # one step off, less rounding
