"""Build small Qwen checkpoints locally (random weights, real Qwen vocabulary and chat templates).

Tests, demos and benchmarks use these instead of the Hub. Weights are initialised with a larger
spread than transformers' default (std 0.02): with the default, greedy decoding repeats one or two
tokens, and parity tests on such a model would prove nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeqwen.testmodels.chat_templates import QWEN3_THINKING, QWEN25_CHATML
from edgeqwen.testmodels.tokenizer_files import write_tokenizer

QWEN_VOCAB = 151_936  # Qwen pads the 151,665 used ids to a multiple of 128 (…of 64 for Qwen3: same size)


@dataclass(frozen=True)
class FixtureSpec:
    name: str
    family: str  # "qwen2" (Qwen2 / Qwen2.5) or "qwen3"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int | None = None  # Qwen3 only; None = hidden // heads
    tied: bool = True
    max_positions: int = 2048
    rope_theta: float = 1_000_000.0
    seed: int = 0
    rope_scaling: tuple[tuple[str, float], ...] = ()  # extra rope_parameters, e.g. YaRN
    embed_std: float = 0.1  # embeddings / lm_head
    block_gain: float = 2.0  # projection std = gain / sqrt(fan_in)
    vocab: int = QWEN_VOCAB
    streamed: bool = False  # written tensor by tensor in bf16 (edgeqwen.testmodels.streamed): large shapes


FIXTURES: dict[str, FixtureSpec] = {
    s.name: s
    for s in [
        # Qwen2 (first generation): untied, rope_theta 1e6, ChatML.
        FixtureSpec("tiny-qwen2", "qwen2", 64, 2, 4, 2, 128, tied=False, seed=1),
        # Qwen2.5: tied like the 0.5B/1.5B/3B models.
        FixtureSpec("tiny-qwen2.5", "qwen2", 64, 2, 4, 2, 192, tied=True, seed=2),
        # Qwen3: head_dim 32 != 64 / 4, untied (as Qwen3-4B+), q_norm/k_norm.
        FixtureSpec("tiny-qwen3", "qwen3", 64, 2, 4, 2, 128, head_dim=32, tied=False, seed=3),
        FixtureSpec("tiny-qwen3-tied", "qwen3", 64, 2, 4, 2, 128, head_dim=32, tied=True, seed=4),
        # Qwen2.5's long-context setting: YaRN factor 4 (scaled down to a 512-token original context).
        FixtureSpec("tiny-qwen2.5-yarn", "qwen2", 64, 2, 4, 2, 192, tied=True, seed=6,
                    rope_scaling=(("factor", 4.0), ("original_max_position_embeddings", 512))),
        # Qwen2.5-0.5B shape, for benchmarks (494M parameters).
        FixtureSpec("qwen2.5-0.5b-shape", "qwen2", 896, 24, 14, 2, 4864, tied=True,
                    max_positions=32768, seed=5),
        # Real sizes, written shard by shard in bf16 without holding the model (3.1 GB, 6.2 GB, 15.2 GB, 16.4 GB).
        FixtureSpec("qwen2.5-1.5b-shape", "qwen2", 1536, 28, 12, 2, 8960, tied=True,
                    max_positions=32768, seed=7, streamed=True),
        FixtureSpec("qwen3-0.6b-shape", "qwen3", 1024, 28, 16, 8, 3072, head_dim=128, tied=True,
                    max_positions=40960, seed=11, streamed=True),
        FixtureSpec("qwen2.5-3b-shape", "qwen2", 2048, 36, 16, 2, 11008, tied=True,
                    max_positions=32768, seed=10, streamed=True),
        FixtureSpec("qwen2.5-7b-shape", "qwen2", 3584, 28, 28, 4, 18944, tied=False,
                    max_positions=32768, seed=8, vocab=152_064, streamed=True),
        FixtureSpec("qwen3-8b-shape", "qwen3", 4096, 36, 32, 8, 12288, head_dim=128, tied=False,
                    max_positions=40960, seed=9, streamed=True),
    ]
}


def _config(spec: FixtureSpec):
    from transformers import Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec.tied,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        hidden_act="silu",
    )
    if spec.family == "qwen3":
        cfg = Qwen3Config(head_dim=spec.head_dim or spec.hidden // spec.heads, **common)
        cfg.architectures = ["Qwen3ForCausalLM"]
    else:
        cfg = Qwen2Config(**common)
        cfg.architectures = ["Qwen2ForCausalLM"]
    if spec.rope_scaling:
        cfg.rope_parameters = {"rope_type": "yarn", "rope_theta": spec.rope_theta, **dict(spec.rope_scaling)}
    else:
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": spec.rope_theta}
    return cfg


def weight_kind(name: str) -> str:
    """The initialisation rule a checkpoint tensor follows: "norm", "bias", "embed" or "proj"."""
    if name.endswith("norm.weight"):
        return "norm"
    if name.endswith(".bias"):
        return "bias"
    if "embed" in name or "lm_head" in name:
        return "embed"
    return "proj"


def scaled(x, kind: str, spec: FixtureSpec, fan_in: int):
    """Standard-normal draws ``x`` (torch or numpy) scaled by the fixture rules, shared by the in-memory
    maker below and the tensor-by-tensor writer (edgeqwen.testmodels.streamed)."""
    if kind == "norm":
        # RMSNorm gains around 1 with some spread, so q_norm/k_norm are not identities.
        return 1.0 + 0.1 * x
    if kind == "bias":
        # Qwen2's q/k/v biases: visibly non-zero so a dropped bias breaks parity.
        return 0.5 * x
    if kind == "embed":
        return spec.embed_std * x
    # With std 1/sqrt(fan_in) the blocks barely move the residual stream and a tied model keeps
    # predicting its input token; a gain of 2 gives varied continuations (measured: 37-40 distinct
    # tokens in 40 greedy steps for every fixture).
    return spec.block_gain / fan_in ** 0.5 * x


def _init_weights(model, spec: FixtureSpec) -> None:
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(scaled(torch.randn(p.shape, generator=gen), weight_kind(name), spec, p.shape[-1]))


def make_checkpoint(name: str, out_dir: Path, dtype: str = "float32", log=lambda s: None,
                    spec: FixtureSpec | None = None) -> Path:
    """Create fixture ``name`` (or ``spec``) in ``out_dir`` (safetensors in ``dtype``); return the folder."""
    spec = spec or FIXTURES[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.streamed:
        return _make_streamed(spec, out_dir, dtype, log)
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(_config(spec), dtype=torch.float32)
    _init_weights(model, spec)
    if spec.tied:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    return _side_files(spec, out_dir, dtype)


def _make_streamed(spec: FixtureSpec, out_dir: Path, dtype: str, log) -> Path:
    from edgeqwen.testmodels.streamed import write_weights

    if dtype != "bfloat16":
        raise ValueError(f"{spec.name} is written tensor by tensor in bfloat16 only (as Qwen ships it); "
                         "pass --dtype bfloat16")
    cfg = _config(spec)
    cfg.dtype = "bfloat16"
    cfg.save_pretrained(out_dir)
    write_weights(spec, out_dir, log=log)
    return _side_files(spec, out_dir, dtype)


def _side_files(spec: FixtureSpec, out_dir: Path, dtype: str) -> Path:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643,
                     do_sample=False).save_pretrained(out_dir)
    template = QWEN3_THINKING if spec.family == "qwen3" else QWEN25_CHATML
    write_tokenizer(out_dir, spec.family, template, spec.max_positions)
    (out_dir / "edgeqwen_fixture.json").write_text(json.dumps({"fixture": spec.name, "dtype": dtype}))
    return out_dir
