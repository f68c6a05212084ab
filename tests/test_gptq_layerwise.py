"""GPTQ layer by layer (edgeqwen.compiler.gptq) against Olive's Gptq pass on the whole model: the same
calibration windows and options give the same packed tensors, bit for bit, on float32 checkpoints, with
``arithmetic = "olive"`` (the fast arithmetics, the default: see ARITHMETICS below).

Why exact equality holds: with that arithmetic the layer-wise code calls Olive's own solver (Gptq.process_module) and packer
(QuantLinear.from_module); it accumulates the Hessians with Olive's formula operation for operation; and
each decoder layer is transformers' own class called with the arguments the model's forward would give it
(SDPA, no mask, the rotary module's tables), one window at a time as Olive's batches of 1. Any difference
in evaluation order would show here as differing codes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

OPTIONS = {"bits": 4, "group_size": 256, "sym": False, "calibration_samples": 4, "calibration_tokens": 64}
ARITHMETICS = ("olive", "fast-fp32", "fast")
# "olive" packs Olive's tensors bit for bit. The fast ones run the same algorithm with the sums in another
# order (and "fast" the calibration matmuls in bf16 on a CPU that has them): GPTQ feeds each column's rounding
# error to the next ones, so a code that flips on a rounding boundary moves others in its row and the next
# layer's inputs. Measured codes equal to Olive's: tiny-qwen2.5 100 % / 93.9 %, tiny-qwen3.5 100 % (fp32),
# tiny-k200 96.3 % / 92.5 %; this floor catches a broken solve (a wrong update or group gives well under half),
# the quality itself is compared on trained models (KL, benchmarks/reports/int4-quality.md).
FAST_AGREEMENT = 0.90


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _both(checkpoint: Path, work: Path, options: dict = OPTIONS,
          arithmetics: tuple[str, ...] = ARITHMETICS) -> tuple[list[Path], Path]:
    """(layer-wise outputs, one per arithmetic; Olive's output) of one Gptq step with ``options``."""
    from edgeqwen.compiler.torch_quant import TorchQuantStep, run

    def step(**extra) -> TorchQuantStep:
        return TorchQuantStep("Gptq", {**options, **extra})

    mine = [run([step(arithmetic=a)], checkpoint, work / a, lambda s: None) for a in arithmetics]
    return mine, run([step(implementation="olive")], checkpoint, work / "olive-pass", lambda s: None)


def _codes(packed):
    """The 4-bit codes of a packed uint8 tensor, low nibble first."""
    import torch

    return torch.stack([packed & 15, packed >> 4], -1)


def _k200(root: Path) -> Path:
    """tiny-qwen2 (untied, q/k/v bias) with intermediate 200: no power-of-two group divides down_proj's K,
    which Olive then quantises one group per row with act order (desc_act None means true for group -1)."""
    from edgeqwen.testmodels.fixtures import FIXTURES, make_checkpoint

    spec = replace(FIXTURES["tiny-qwen2"], name="tiny-k200", intermediate=200)
    return make_checkpoint(spec.name, root / spec.name, spec=spec)


# quick: one family (the quick tier is at its 5-minute budget); slow: the others, Qwen3.5's own calibration forward
@pytest.mark.parametrize("fixture", ["tiny-qwen2.5", pytest.param("tiny-qwen3", marks=pytest.mark.slow),
                                     pytest.param("tiny-k200", marks=pytest.mark.slow),
                                     pytest.param("tiny-qwen3.5", marks=pytest.mark.slow)])
def test_layerwise_gptq_packs_exactly_what_olives_pass_packs(checkpoints, tmp_path, fixture):
    """tiny-qwen2.5: tied, q/k/v biases; tiny-qwen3: q/k norms, head_dim 32; tiny-k200: a per-row group with
    act order; tiny-qwen3.5: Gated DeltaNet layers calibrated through transformers' chunked delta rule, gated
    attention, the multimodal checkpoint's model.language_model. names (Olive's overrides name the text
    model's modules: model.layers.). Every tensor equal (packed codes, zero points, scales, the float
    tensors) and the same quantization_config (quant_method olive, the group overrides), with the layer-wise
    step's "olive" arithmetic; the fast arithmetics give the same tensors and config, FAST_AGREEMENT of the
    codes at least equal."""
    import torch

    ckpt = _k200(tmp_path) if fixture == "tiny-k200" else checkpoints(fixture)
    arithmetics = ARITHMETICS if fixture == "tiny-qwen2.5" else ("olive", "fast")  # the suite's time budget
    outputs, olive = _both(ckpt, tmp_path, arithmetics=arithmetics)
    b = _tensors(olive)
    qb = json.loads((olive / "config.json").read_text())["quantization_config"]
    for arithmetic, mine in zip(arithmetics, outputs):
        a = _tensors(mine)
        assert sorted(a) == sorted(b)
        assert json.loads((mine / "config.json").read_text())["quantization_config"] == qb
        differing = [n for n in b if a[n].dtype != b[n].dtype or not torch.equal(a[n], b[n])]
        if arithmetic == "olive":
            assert not differing, differing
            continue
        codes = [n for n in b if n.endswith(".qweight")]
        equal = sum(int((_codes(a[n]) == _codes(b[n])).sum()) for n in codes)
        assert equal >= FAST_AGREEMENT * sum(_codes(b[n]).numel() for n in codes), (arithmetic, equal)
        assert not [n for n in differing if not n.endswith((".qweight", ".qzeros", ".scales"))]  # float tensors as stored
    assert qb["quant_method"] == "olive"
    if fixture == "tiny-k200":
        assert qb["overrides"]["model.layers.1.mlp.down_proj"] == {"group_size": -1}
    if fixture == "tiny-qwen3.5":
        assert "model.language_model.layers.0.linear_attn.in_proj_qkv.qweight" in b
        assert qb["overrides"]["model.layers.0.linear_attn.in_proj_qkv"] == {"group_size": 64}


@pytest.mark.parametrize("group, desc_act", [(128, None), (64, None), (-1, None), (-1, False)])
def test_the_transposed_solve_is_olives_solve(group, desc_act):
    """own_solve on a hand-made Hessian with a dead input (one that never fired) and uneven input scales:
    the same codes and zero points as Olive's Gptq.process_module, its scales within rounding (its updates run
    in place, fused: measured 2.1e-7 relative), for groups inside a block (64), across blocks (128) and one
    per row with and without act order."""
    import torch

    from edgeqwen.compiler.gptq.hessian import Hessian
    from edgeqwen.compiler.gptq.options import ModuleFormat
    from edgeqwen.compiler.gptq.own_solve import factor_of, solve
    from edgeqwen.compiler.gptq.solve import pack, quantize_linear

    torch.manual_seed(0)
    k, n = 384, 96
    x = torch.randn(6, 64, k) * torch.linspace(0.1, 3, k)  # 6 windows of 64 tokens
    x[..., 7] = 0
    h = Hessian(torch.zeros(k, k))
    for w in x:
        h.add(w[None])
    fmt = ModuleFormat(4, False, group)
    linear = torch.nn.Linear(k, n, bias=False)
    weight = linear.weight.data.clone()
    packed = quantize_linear(linear, Hessian(h.h.clone(), h.n), fmt, 0.01, desc_act)
    q, scales, zeros = solve(weight, factor_of(Hessian(h.h.clone(), h.n), fmt, 0.01, desc_act), fmt)
    mine = pack(torch.nn.Linear(k, n, bias=False), q, scales, zeros, fmt)
    assert torch.equal(mine.qweight, packed.qweight) and torch.equal(mine.qzeros, packed.qzeros)
    assert torch.allclose(scales, packed.scales, rtol=1e-5, atol=0)
    assert torch.allclose(q, linear.weight.data, rtol=1e-5, atol=1e-7)
    assert q[:, 7].abs().max() == 0  # the dead input's weights are zeroed, as Olive does


@pytest.mark.parametrize("k", [1, 2, 511, 513, 1025, 2001])
def test_the_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse(k):
    """own_solve's in-place chain (cholesky -> cholesky_inverse -> upper cholesky in one [K, K] buffer) gives
    chol(H^-1, upper) (float64 reference; measured 1e-8 .. 2.2e-7 of its largest value for these sizes, fp32's
    rounding grown by K), upper triangular, and leaves H as it was (a retry damps it more)."""
    import torch

    from edgeqwen.compiler.gptq.own_solve import _upper_inverse_factor

    torch.manual_seed(k)
    x = torch.randn(2 * k + 3, k, dtype=torch.float64)
    h = x.t() @ x / (2 * k)
    h.diagonal().add_(0.01)
    kept = h.float()
    u = _upper_inverse_factor(kept)
    want = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    assert torch.equal(u.tril(-1), torch.zeros_like(u))
    assert float((u.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert torch.equal(kept, h.float())


def test_a_hessian_not_positive_definite_is_damped_more_not_fatal():
    """A Hessian with a negative eigenvalue of 3 % of its mean diagonal (what rounding gives a near-singular
    one): the damping doubles from the profile's 1 % until the factorisation holds (4 %), and the factor is
    that of (H + 0.04 mean(diag H) I)^-1; a positive definite one keeps the profile's damping; a non-finite
    one is refused."""
    import torch

    from edgeqwen.compiler.gptq.own_solve import NotPositiveDefinite, inverse_factor

    torch.manual_seed(0)
    k = 64
    basis, _ = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64))
    eig = torch.ones(k, dtype=torch.float64)
    eig[0] = -0.03 * (k - 1) / (k + 0.03)  # -3 % of the mean diagonal, trace / k
    h = (basis * eig) @ basis.t()
    f = inverse_factor(h.float().clone(), 0.01, False)
    assert f.damp == 0.04
    damped = h + 0.04 * torch.diag(h).mean() * torch.eye(k, dtype=torch.float64)
    assert torch.allclose((f.u.t() @ f.u).double(), torch.linalg.inv(damped), rtol=0, atol=1e-3)
    assert inverse_factor((basis * eig.abs()) @ basis.t(), 0.01, False).damp == 0.01
    bad = h.float().clone()
    bad[3, 5] = float("nan")
    with pytest.raises(NotPositiveDefinite, match="not finite"):
        inverse_factor(bad, 0.01, False)


def test_nan_weights_or_activations_are_refused_in_one_line(checkpoints, tmp_path):
    """A NaN in layer 0's input norm makes q/k/v's input NaN: the build stops with one line naming those
    modules, not torch's traceback (either arithmetic); a NaN in a weight GPTQ would quantise is named
    as that weight."""
    import shutil

    from safetensors.torch import load_file, save_file

    from edgeqwen.compiler.torch_quant import TorchQuantStep, run
    from edgeqwen.errors import QuantisationFailed

    def damaged(name: str) -> Path:
        folder = tmp_path / name
        if folder.exists():
            return folder
        shutil.copytree(checkpoints("tiny-qwen2.5"), folder)
        (weights,) = folder.glob("*.safetensors")
        tensors = load_file(str(weights))
        tensors[name].view(-1)[0] = float("nan")
        save_file(tensors, str(weights), metadata={"format": "pt"})
        return folder

    cases = [("model.layers.0.input_layernorm.weight", "fast", r"model\.layers\.0\.self_attn\.q_proj/.*not finite"),
             ("model.layers.0.input_layernorm.weight", "olive", r"model\.layers\.0\.self_attn\.q_proj/.*damp_percent"),
             ("model.layers.1.mlp.up_proj.weight", "fast", r"model\.layers\.1\.mlp\.up_proj\.weight has NaN")]
    for tensor, arithmetic, message in cases:
        with pytest.raises(QuantisationFailed, match=message) as e:
            run([TorchQuantStep("Gptq", {**OPTIONS, "arithmetic": arithmetic})], damaged(tensor),
                tmp_path / f"{arithmetic}-{len(message)}", lambda s: None)
        assert "\n" not in str(e.value)


def test_the_symmetric_hessian_is_olives_up_to_the_order_of_sums():
    """Only the upper blocks multiplied, windows batched: Olive's 2/N sum x x^T within fp32 rounding, and
    exactly symmetric (the lower blocks are copies)."""
    import torch

    from edgeqwen.compiler.gptq.hessian import HESSIAN_BLOCK, Hessian, SymmetricHessian

    torch.manual_seed(1)
    k = HESSIAN_BLOCK + 300  # a partial last block
    olive, mine = Hessian(torch.zeros(k, k)), SymmetricHessian(k)
    for _ in range(5):
        x = torch.randn(1, 700, k)
        olive.add(x)
        mine.add(x)
    got = mine.finish()
    assert got.n == olive.n == 5
    assert torch.equal(got.h, got.h.t())
    assert ((got.h - olive.h).abs().max() / olive.h.abs().max()) < 1e-5  # measured 3e-7


def test_bf16_linears_change_only_the_linear_layers():
    """linears_in(bf16): each linear multiplies a bf16 copy of its weight (the output within bf16's
    rounding of the fp32 one), its bias added in fp32, its input hooks see fp32; leaving the block restores
    the module's own forward."""
    import torch

    from edgeqwen.compiler.gptq.precision import linears_in

    torch.manual_seed(2)
    layer = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64, bias=False))
    x = torch.randn(8, 256)
    seen = []
    layer[0].register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    want = layer(x)
    with linears_in(layer, torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.float32 and seen == [torch.float32, torch.float32]
    assert 0 < (got - want).abs().max() <= 2 ** -7 * want.abs().max()
    assert "forward" not in vars(layer[0]) and torch.equal(layer(x), want)


def test_the_arithmetic_option_is_checked_with_the_profile():
    from edgeqwen.errors import ProfileError
    from edgeqwen.profile_passes import step_arithmetic

    assert step_arithmetic("Gptq", {}) == "fast"
    assert step_arithmetic("Gptq", {"arithmetic": "olive"}) == "olive"
    with pytest.raises(ProfileError, match="not one of fast, fast-fp32, olive"):
        step_arithmetic("Gptq", {"arithmetic": "bf16"})
    with pytest.raises(ProfileError, match="layer-wise Gptq only"):
        step_arithmetic("Gptq", {"arithmetic": "fast", "implementation": "olive"})


def test_the_layerwise_checkpoint_is_complete_and_sharded(checkpoints, tmp_path):
    """One shard for the table, one per layer, one for the final norm (and an untied lm_head); an index
    naming them; the tokenizer and generation files; float tensors kept in the checkpoint's dtype (bf16)
    while the scales GPTQ chose stay fp32."""
    from edgeqwen.compiler.torch_quant import TorchQuantStep, run
    from edgeqwen.safetensors_io import CheckpointTensors

    ckpt = checkpoints("tiny-qwen3", "bfloat16")
    out = run([TorchQuantStep("Gptq", OPTIONS)], ckpt, tmp_path, lambda s: None)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(set(index.values())) and len(shards) == 2 + 2
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    with CheckpointTensors(out, shards) as t:
        dtype = {n: t.where[n].entries[n]["dtype"] for n in t.where}
    assert dtype["model.embed_tokens.weight"] == dtype["lm_head.weight"] == "BF16"
    assert dtype["model.layers.1.self_attn.k_norm.weight"] == "BF16"
    assert dtype["model.layers.1.mlp.down_proj.scales"] == "F32" and dtype["model.layers.1.mlp.down_proj.qweight"] == "U8"
    assert "model.layers.0.self_attn.q_proj.weight" not in index


ALIVE = """
import gc, json, sys, types
from pathlib import Path
import torch
from edgeqwen.compiler.torch_quant import TorchQuantStep, run
run([TorchQuantStep("Gptq", json.loads(sys.argv[3]))], Path(sys.argv[1]), Path(sys.argv[2]), lambda s: None)
gc.collect()
modules = sorted({type(o).__name__ for o in gc.get_objects()  # transformers' activations are global and weightless
                   if isinstance(o, torch.nn.Module) and next(o.parameters(), None) is not None})
frames = sorted({f"{o.f_code.co_filename.split('edgeqwen/')[-1]}:{o.f_code.co_name}" for o in gc.get_objects()
                 if isinstance(o, types.FrameType) and "edgeqwen/compiler/" in o.f_code.co_filename
                 and "olive_import" not in o.f_code.co_filename})
print(json.dumps({"modules": modules, "frames": frames}))
"""


@pytest.mark.slow  # a fresh interpreter importing torch, transformers and Olive (~20 s)
def test_no_layer_outlives_its_solve(checkpoints, tmp_path):
    """In a fresh interpreter (Olive not yet imported, as in a build), once layer-wise GPTQ has returned no
    torch module with weights and no frame of the compiler is alive. A library that keeps an exception (optuna keeps the
    ModuleNotFoundError of each backend it lacks) keeps its traceback's frames and, through f_back, their
    callers: Olive imported during the first layer's solve kept that layer (its fp32 weights: 1.07 GB at
    the 8B shape) for the rest of the build. olive_import's own thread frame holds nothing and is left out."""
    import subprocess
    import sys

    options = json.dumps(OPTIONS)
    r = subprocess.run([sys.executable, "-c", ALIVE, str(checkpoints("tiny-qwen2.5")), str(tmp_path / "out"), options],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    alive = json.loads(r.stdout.splitlines()[-1])
    assert alive == {"modules": [], "frames": []}, alive


def test_layerwise_gptq_refuses_what_it_does_not_do():
    from edgeqwen.compiler.gptq import GptqOptions
    from edgeqwen.compiler.torch_quant import TorchQuantStep, implementation
    from edgeqwen.errors import ProfileError

    assert GptqOptions.parse({"bits": 4, "group_size": 256, "sym": False}).module("x").group_size == 256
    for bad in ({"lm_head": True}, {"blocksize": 64}, {"group_size": 0}, {"desc_act": True, "group_size": 128},
                {"data_config": {"name": "wikitext"}}):
        with pytest.raises(ProfileError):
            GptqOptions.parse(bad)
    with pytest.raises(ProfileError):
        implementation(TorchQuantStep("Rtn", {"implementation": "layerwise"}))
    assert implementation(TorchQuantStep("Gptq", {})) == "layerwise"
    assert implementation(TorchQuantStep("Rtn", {})) == "olive"


def test_qkv_take_one_format_as_olive_gives_them():
    """Olive's normalize_qkv_quant_config: q, k and v of a layer get the most precise of their formats."""
    from edgeqwen.compiler.gptq.options import GptqOptions, module_formats

    o = GptqOptions(group_size=128, overrides={"l.k": {"group_size": 32}, "l.v": {"bits": 8}})
    f = module_formats(o, [("l.q", "l.k", "l.v"), ("l.o",)])
    assert {f["l.q"], f["l.k"], f["l.v"]} == {f["l.v"]} and f["l.v"].bits == 8 and f["l.v"].group_size == 128
    assert f["l.o"] == o.default()


def test_the_layerwise_peak_is_one_layers_not_the_models():
    """Qwen3-8B's shape at the profile's 32 x 512 windows: the model covers the measured peak (3.39 GiB on its
    first 2 layers, /usr/bin/time -v; the whole-model pass would need about 66 GiB) without doubling it; the
    terms are the ones the module docstring lists."""
    from edgeqwen.build_memory import layer_dims, layerwise_peak
    from edgeqwen.testmodels.fixtures import FIXTURES

    spec = FIXTURES["qwen3-8b-shape"].model_spec
    peak = layerwise_peak(layer_dims(spec), 32, 512)
    assert 3.39 * 2**30 <= peak.total < 4.5 * 2**30
    small = layerwise_peak(layer_dims(FIXTURES["qwen2.5-0.5b-shape"].model_spec), 32, 512)
    assert small.total >= 1.04e9  # measured on the 0.5B shape's first 2 layers
    assert peak.states == 32 * 512 * 4096 * 4 and peak.hessians == (2 * 4096**2 + 4096**2 + 12288**2) * 4
