"""Build small Qwen checkpoints locally (random weights, real Qwen vocabulary and chat templates).

Tests, demos and benchmarks use these instead of the Hub. Weights are initialised with a larger
spread than transformers' default (std 0.02): with the default, greedy decoding repeats one or two
tokens, and parity tests on such a model would prove nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeqwen.model.spec import ModelSpec, parse_spec
from edgeqwen.model.published import published_config, published_generation_config
from edgeqwen.testmodels.chat_templates import QWEN3_THINKING, QWEN25_CHATML, QWEN35_NON_THINKING, qwen35_template
from edgeqwen.testmodels.tokenizer_files import write_tokenizer

QWEN_VOCAB = 151_936  # Qwen pads the 151,665 used ids to a multiple of 128 (…of 64 for Qwen3: same size)

# Every fixture starts from the published config.json and generation_config.json of a real Qwen model
# (edgeqwen.model.published) and changes only sizes, so it has exactly the keys a real checkpoint has,
# and lacks the ones it lacks (Qwen2.5-0.5B-Instruct's config.json has no pad_token_id).
# the keys that are sizes: the only ones a fixture changes
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "max_position_embeddings", "vocab_size", "max_window_layers", "sliding_window",
             # Qwen3.5: the linear-attention sizes, the layer pattern cut to the layer count, the vision tower's sizes
             "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
             "layer_types", "depth", "num_heads", "out_hidden_size")
# A tiny vision tower (Qwen3.5 ships one in every checkpoint; text builds leave it unread)
TINY_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}


def published(model: str) -> tuple[dict, dict | None]:
    """(config.json, generation_config.json or None) of the published model ``model``. None where no copy of
    its generation_config.json was found (Qwen3.5): the fixture then ships none, rather than one invented."""
    try:
        config = published_config(model)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return config, published_generation_config(model)


@dataclass(frozen=True)
class FixtureSpec:
    name: str
    published: str  # the real model whose configs this fixture starts from (a folder in PUBLISHED)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int | None = None  # Qwen3 only; None = hidden // heads
    max_positions: int | None = None  # None = as published
    seed: int = 0
    rope_scaling: tuple[tuple[str, float], ...] = ()  # a rope_scaling table as the model card says to add (YaRN)
    embed_std: float = 0.1  # embeddings / lm_head
    block_gain: float = 2.0  # projection std = gain / sqrt(fan_in)
    vocab: int | None = None  # None = as published
    streamed: bool = False  # written tensor by tensor in bf16 (edgeqwen.testmodels.streamed): large shapes
    # Qwen3.5's linear-attention layers: (key heads, value heads, key head dim, value head dim); None = as published
    linear: tuple[int, int, int, int] | None = None
    mtp: bool = True  # Qwen3.5: also write the multi-token-prediction tensors the published checkpoints carry

    @property
    def base(self) -> dict:
        return published(self.published)[0]

    @property
    def text_base(self) -> dict:
        """The published language-model config: the top level, or Qwen3.5's text_config."""
        return self.base.get("text_config", self.base)

    @property
    def model_spec(self) -> ModelSpec:
        """What the fixture's config files describe, read by the one parser every consumer uses."""
        return parse_spec(config_dict(self), generation_config_dict(self))

    @property
    def family(self) -> str:
        return self.model_spec.family

    @property
    def tied(self) -> bool:
        return self.model_spec.tied

    @property
    def vocab_size(self) -> int:
        return self.vocab or self.text_base["vocab_size"]

    @property
    def positions(self) -> int:
        return self.max_positions or self.text_base["max_position_embeddings"]


FIXTURES: dict[str, FixtureSpec] = {
    s.name: s
    for s in [
        # Qwen2 / Qwen2.5 untied (7B and larger), rope_theta 1e6, ChatML.
        FixtureSpec("tiny-qwen2", "Qwen2.5-7B-Instruct", 64, 2, 4, 2, 128, max_positions=2048, seed=1),
        # Qwen2.5 tied like the 0.5B/1.5B/3B models.
        FixtureSpec("tiny-qwen2.5", "Qwen2.5-0.5B-Instruct", 64, 2, 4, 2, 192, max_positions=2048, seed=2),
        # Qwen3: head_dim 32 != 64 / 4, untied (as Qwen3-4B+), q_norm/k_norm.
        FixtureSpec("tiny-qwen3", "Qwen3-8B", 64, 2, 4, 2, 128, head_dim=32, max_positions=2048, seed=3),
        FixtureSpec("tiny-qwen3-tied", "Qwen3-0.6B", 64, 2, 4, 2, 128, head_dim=32, max_positions=2048, seed=4),
        # Qwen2.5's long-context setting as its model card adds it: YaRN factor 4 (scaled down to a 512-token
        # original context), on the untied 7B config the card gives it for.
        FixtureSpec("tiny-qwen2.5-yarn", "Qwen2.5-7B-Instruct", 64, 2, 4, 2, 192, max_positions=2048, seed=6,
                    rope_scaling=(("factor", 4.0), ("original_max_position_embeddings", 512), ("type", "yarn"))),
        # Qwen2.5-Coder and Qwen2.5-Math (4K context) as published
        FixtureSpec("tiny-qwen2.5-coder", "Qwen2.5-Coder-1.5B-Instruct", 64, 2, 4, 2, 192, max_positions=2048,
                    seed=12),
        FixtureSpec("tiny-qwen2.5-math", "Qwen2.5-Math-1.5B-Instruct", 64, 2, 4, 2, 192, seed=13),
        # Qwen2.5-0.5B shape, for benchmarks (494M parameters).
        FixtureSpec("qwen2.5-0.5b-shape", "Qwen2.5-0.5B-Instruct", 896, 24, 14, 2, 4864, seed=5),
        # Real sizes, written shard by shard in bf16 without holding the model (3.1 GB, 6.2 GB, 15.2 GB, 16.4 GB).
        FixtureSpec("qwen2.5-1.5b-shape", "Qwen2.5-Coder-1.5B-Instruct", 1536, 28, 12, 2, 8960, seed=7,
                    streamed=True),
        FixtureSpec("qwen3-0.6b-shape", "Qwen3-0.6B", 1024, 28, 16, 8, 3072, head_dim=128, seed=11, streamed=True),
        FixtureSpec("qwen2.5-3b-shape", "Qwen2.5-0.5B-Instruct", 2048, 36, 16, 2, 11008, seed=10, streamed=True),
        FixtureSpec("qwen2.5-7b-shape", "Qwen2.5-7B-Instruct", 3584, 28, 28, 4, 18944, seed=8, streamed=True),
        FixtureSpec("qwen3-8b-shape", "Qwen3-8B", 4096, 36, 32, 8, 12288, head_dim=128, seed=9, streamed=True),
        # Qwen3.5 (hybrid: 3 Gated DeltaNet layers, then 1 gated full-attention layer), multimodal checkpoints
        # as published (vision tower and mtp layer present, unread by text builds). Tied as the 0.8B-4B models,
        # value heads = key heads as the 0.8B; untied as the 27B, two value heads per key head as the 4B-27B.
        FixtureSpec("tiny-qwen3.5", "Qwen3.5-0.8B", 64, 4, 4, 2, 128, head_dim=64, max_positions=2048, seed=14,
                    linear=(2, 2, 32, 32)),
        FixtureSpec("tiny-qwen3.5-untied", "Qwen3.5-27B", 64, 8, 4, 2, 128, head_dim=64, max_positions=2048,
                    seed=15, linear=(2, 4, 32, 32)),
        # Qwen3.5 at real sizes, tensor by tensor in bf16 (text model only). The 0.8B as published; the 2B and
        # 9B sizes from their model cards (their config.json was not found whole), on the stored config of the
        # same tying: the 0.8B's (tied) for the 2B, the 27B's (untied) for the 9B.
        FixtureSpec("qwen3.5-0.8b-shape", "Qwen3.5-0.8B", 1024, 24, 8, 2, 3584, head_dim=256, seed=16, streamed=True),
        FixtureSpec("qwen3.5-2b-shape", "Qwen3.5-0.8B", 2048, 24, 8, 2, 6144, head_dim=256, seed=17, streamed=True,
                    linear=(16, 16, 128, 128)),
        FixtureSpec("qwen3.5-9b-shape", "Qwen3.5-27B", 4096, 32, 16, 4, 12288, head_dim=256, seed=18, streamed=True,
                    linear=(16, 32, 128, 128)),
    ]
}


def config_dict(spec: FixtureSpec, dtype: str = "float32") -> dict:
    """The fixture's config.json: the published one with only its sizes (and the weights' dtype) changed."""
    cfg = json.loads(json.dumps(spec.base))  # a deep copy: Qwen3.5 nests text_config and vision_config
    text = cfg.get("text_config", cfg)
    _resize_text(spec, text, dtype)
    if "vision_config" in cfg:
        vision = cfg["vision_config"]
        vision.update(TINY_VISION, out_hidden_size=spec.hidden)
        assert set(TINY_VISION) | {"out_hidden_size"} <= set(SIZE_KEYS) | {"intermediate_size", "hidden_size"}
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = dtype
    return cfg


def _resize_text(spec: FixtureSpec, cfg: dict, dtype: str) -> None:
    """The language model's sizes in place (the top-level config, or Qwen3.5's text_config)."""
    sizes = {"hidden_size": spec.hidden, "intermediate_size": spec.intermediate, "num_hidden_layers": spec.layers,
             "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads,
             "max_position_embeddings": spec.positions, "vocab_size": spec.vocab_size}
    if spec.head_dim is not None or "head_dim" in cfg:
        sizes["head_dim"] = spec.head_dim or spec.hidden // spec.heads
    if "max_window_layers" in cfg:  # Qwen2's sliding-window layer count (off in every published model)
        sizes["max_window_layers"] = min(cfg["max_window_layers"], spec.layers)
    if cfg.get("sliding_window") is not None:
        sizes["sliding_window"] = min(cfg["sliding_window"], spec.positions)
    if "layer_types" in cfg:  # the published pattern (3 linear, 1 full, ...) cut to the fixture's layers
        sizes["layer_types"] = list(cfg["layer_types"][:spec.layers])
    if spec.linear is not None:
        for key, value in zip(("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                               "linear_value_head_dim"), spec.linear):
            sizes[key] = value
    assert set(sizes) <= set(SIZE_KEYS)
    cfg.update(sizes)
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = dtype
    if spec.rope_scaling:
        cfg["rope_scaling"] = dict(spec.rope_scaling)


def generation_config_dict(spec: FixtureSpec) -> dict:
    """The published generation_config.json, as it is (it has no sizes); {} where none is stored."""
    return dict(published(spec.published)[1] or {})


def _config(spec: FixtureSpec, dtype: str = "float32"):
    """The transformers config of ``spec``, read from its config.json the way from_pretrained reads it."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in config_dict(spec, dtype).items()
                                   if k not in ("transformers_version",)})


# Qwen3.5's RMSNorms are applied as 1 + w (weights stored around 0), except the linear-attention layers'
# gated norm (plain weight around 1) and the vision tower's LayerNorms
_PLAIN_NORMS = ("linear_attn.norm.weight", "visual.")


def weight_kind(name: str, norm_offset: bool = False) -> str:
    """The initialisation rule a checkpoint tensor follows: "norm", "offset_norm", "bias", "embed", "proj",
    or Qwen3.5's "A_log", "dt_bias" and "conv"."""
    if name.endswith("norm.weight") or name.endswith("_norm_embedding.weight") or name.endswith("_norm_hidden.weight"):
        return "offset_norm" if norm_offset and not any(p in name for p in _PLAIN_NORMS) else "norm"
    if name.endswith(".A_log"):
        return "A_log"
    if name.endswith(".dt_bias"):
        return "dt_bias"
    if name.endswith("conv1d.weight"):
        return "conv"
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
    if kind == "offset_norm":  # the same gains, stored as w of 1 + w
        return 0.1 * x
    if kind == "A_log":
        # decay rates exp(A_log) spread over about 0.05..10 as transformers' uniform(0.01, 16) init does,
        # from a normal draw: log-rates around 0 with std 1.2
        return 1.2 * x
    if kind == "dt_bias":
        return 0.5 * x
    if kind == "conv":
        # the depthwise conv's taps [C, 1, kernel]: each channel's output about the size of its input
        return 0.5 * x
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
    offset = spec.model_spec.norm_offset
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(scaled(torch.randn(p.shape, generator=gen), weight_kind(name, offset), spec, p.shape[-1]))


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
    config = _config(spec)
    if getattr(config, "text_config", None) is not None:  # Qwen3.5 as published: the multimodal class
        import transformers

        model = getattr(transformers, config.architectures[0])._from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, spec)
    if spec.tied:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    if spec.model_spec.mtp_layers and spec.mtp:
        _add_mtp(spec, out_dir, dtype)
    return _side_files(spec, out_dir, dtype)


def _add_mtp(spec: FixtureSpec, out_dir: Path, dtype: str) -> None:
    """The multi-token-prediction layer's tensors (mtp.*) the published Qwen3.5 checkpoints carry beside the
    model transformers builds (which ignores them), added to the saved file as a real checkpoint holds them."""
    import torch
    from safetensors.torch import load_file, save_file

    from edgeqwen.model.tensors import mtp_layout

    ms = spec.model_spec
    gen = torch.Generator().manual_seed(spec.seed + 1000)
    path = out_dir / "model.safetensors"
    tensors = load_file(str(path))
    for name, shape in mtp_layout(ms):
        x = scaled(torch.randn(shape, generator=gen), weight_kind(name, ms.norm_offset), spec, shape[-1])
        tensors[name] = x.to(getattr(torch, dtype)).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _make_streamed(spec: FixtureSpec, out_dir: Path, dtype: str, log) -> Path:
    from edgeqwen.testmodels.streamed import write_weights

    if dtype != "bfloat16":
        raise ValueError(f"{spec.name} is written tensor by tensor in bfloat16 only (as Qwen ships it); "
                         "pass --dtype bfloat16")
    write_weights(spec, out_dir, log=log)
    return _side_files(spec, out_dir, dtype)


def chat_template(spec: FixtureSpec) -> str:
    """The template of the fixture's family: Qwen2.5's ChatML, Qwen3's thinking template, Qwen3.5's (XML tool
    calls, reasoning opened in the prompt; the published model's default thinking mode)."""
    if spec.family == "qwen3_5":
        return qwen35_template(spec.published not in QWEN35_NON_THINKING)
    return QWEN3_THINKING if spec.family == "qwen3" else QWEN25_CHATML


def _side_files(spec: FixtureSpec, out_dir: Path, dtype: str) -> Path:
    """config.json and generation_config.json as published (save_pretrained's own are replaced: it writes
    every key, null where unset), tokenizer and chat template."""
    (out_dir / "config.json").write_text(json.dumps(config_dict(spec, dtype), indent=2) + "\n", encoding="utf-8")
    if published(spec.published)[1] is None:  # save_pretrained's own, derived from config.json, is not it
        (out_dir / "generation_config.json").unlink(missing_ok=True)
    else:
        (out_dir / "generation_config.json").write_text(json.dumps(generation_config_dict(spec), indent=2) + "\n",
                                                        encoding="utf-8")
    template = chat_template(spec)
    write_tokenizer(out_dir, spec.family, template, spec.positions)
    (out_dir / "edgeqwen_fixture.json").write_text(json.dumps({"fixture": spec.name, "dtype": dtype,
                                                               "published": spec.published}))
    return out_dir


def resave_with_transformers(src: Path, dst: Path) -> Path:
    """``src`` loaded and saved again by transformers 5, as a user's fine-tuning script would leave it:
    its config.json then lists every key (``"pad_token_id": null`` among them) and its own
    generation_config.json replaces the published one."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    dst = Path(dst)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model.save_pretrained(dst, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)
    return dst
