"""The typed description of a checkpoint, parsed once from config.json + generation_config.json.

Stdlib only: the compiler, the references, the planner and the fixture makers read a ``ModelSpec``
instead of picking keys out of config dicts, so every reader decides a feature (bias, q/k norm, tied
tables, head_dim, rope) the same way. A new architecture is one ``ArchitectureRule`` in ``RULES``, a
tensor map (``edgeqwen.model.tensors``) and its layer writers; what the rules do not know is refused in
one line (``SpecError``), never read as the nearest thing they do know.

Missing keys take transformers' own defaults for that architecture (as loading the checkpoint there
would); keys are read where transformers reads them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from edgeqwen.model.generation import GenerationSettings, generation_settings, read_json

CONFIG = "config.json"


class SpecError(ValueError):
    """A config the spec rules cannot describe; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding as the config states it (the tables themselves come from transformers' code)."""

    kind: str  # "default" | "linear" | "yarn" | "llama3": tables independent of the running length
    theta: float
    factor: float | None  # scaling factor of the non-default kinds
    partial_factor: float  # share of head_dim rotated (1.0: all of it)
    table: Mapping[str, Any]  # the rope_parameters / rope_scaling table as written, rope_theta included
    # multi-axis rotary (mRoPE: position axes t, h, w), for the architectures whose rotary is (Qwen3.5): the
    # config's mrope_section or the architecture's default; empty for one-axis rotary
    sections: tuple[int, ...] = ()
    interleaved: bool = False  # the axes' pairs interleaved (Qwen3.5) rather than in consecutive runs

    def describe(self) -> dict[str, Any]:
        """The table as transformers standardises it (a 4.x ``type`` key also named ``rope_type``)."""
        out = dict(self.table)
        if "type" in out and "rope_type" not in out:
            out["rope_type"] = out["type"]
        return out


@dataclass(frozen=True)
class LayerKind:
    """What one decoder layer is: its token mixer and its feed-forward."""

    mixer: str  # "full_attention" (KV cache) | "linear_attention" (Gated DeltaNet: a fixed recurrent state)
    mlp: str  # "dense"; later "moe"


FULL_ATTENTION = LayerKind("full_attention", "dense")
LINEAR_ATTENTION = LayerKind("linear_attention", "dense")
MIXERS = {"full_attention": FULL_ATTENTION, "linear_attention": LINEAR_ATTENTION}
# The layer kinds edgeqwen's compiler writes and its runtime steps. A spec with another kind is still
# described (the planner and the fixture makers read it) but a build refuses it in one line.
BUILT_MIXERS = frozenset({"full_attention", "linear_attention"})


@dataclass(frozen=True)
class LinearAttentionSpec:
    """Gated DeltaNet (Qwen3.5's linear attention layers). Per layer and sequence its state has a fixed
    size whatever the context: the causal conv's last kernel - 1 inputs [conv_dim, kernel - 1] and the
    delta rule's recurrent state [v_heads, k_dim, v_dim]."""

    k_heads: int  # linear_num_key_heads (q and k)
    v_heads: int  # linear_num_value_heads (a multiple of k_heads: each k head serves v_heads / k_heads)
    k_dim: int  # linear_key_head_dim
    v_dim: int  # linear_value_head_dim
    conv_kernel: int  # linear_conv_kernel_dim

    @property
    def key_total(self) -> int:
        return self.k_heads * self.k_dim

    @property
    def value_total(self) -> int:
        return self.v_heads * self.v_dim

    @property
    def conv_dim(self) -> int:
        """Channels of in_proj_qkv and the depthwise conv: q, k and v side by side."""
        return 2 * self.key_total + self.value_total

    def state_elements(self) -> int:
        """Floats of one layer's state for one sequence: conv window + recurrent state."""
        return self.conv_dim * (self.conv_kernel - 1) + self.v_heads * self.k_dim * self.v_dim


# Rope kinds whose tables do not depend on the running sequence length (the graphs hold static tables).
STATIC_ROPE_KINDS = ("default", "linear", "yarn", "llama3")


@dataclass(frozen=True)
class ModelSpec:
    architecture: str  # config.json's architectures[0], e.g. "Qwen2ForCausalLM"
    family: str  # "qwen2" | "qwen3" | "qwen3_5": chat template behaviour, thinking support
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rms_eps: float
    positions: int  # max_position_embeddings
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2 always; Qwen3 when attention_bias)
    qk_norm: bool  # RMSNorm over each head's q and k before rotary (Qwen3)
    tied: bool  # the output matrix is the embedding table
    rope: RopeSpec
    layer_kinds: tuple[LayerKind, ...]
    rotary_module: str  # "module:Class" of transformers' rotary embedding for this architecture
    decoder_layer: str  # "module:Class" of transformers' decoder layer (GPTQ builds one layer at a time)
    generation: GenerationSettings  # token ids and sampling (thinking off; see generation_for)
    config: Mapping[str, Any]  # the parsed config.json, read-only: for transformers (references, rotary)
    generation_config: Mapping[str, Any]  # the parsed generation_config.json ({} if absent)
    text_config_key: str = ""  # where the language model's fields are: "" (top level) or "text_config"
    norm_offset: bool = False  # RMSNorm weights applied as 1 + w (Qwen3.5; stored around 0)
    attn_output_gate: bool = False  # q_proj also emits a per-channel gate: attention output x sigmoid(gate)
    linear_attention: LinearAttentionSpec | None = None  # the linear_attention layers' sizes
    mtp_layers: int = 0  # multi-token-prediction layers the checkpoint carries (mtp.*; unused by transformers)
    vision: bool = False  # a vision tower is configured (its tensors stay in the checkpoint, unused here)
    # the placeholder ids (image, video) whose embeddings a vision encoder's features replace, in order
    vision_tokens: tuple[int, ...] = ()

    @property
    def text_config(self) -> Mapping[str, Any]:
        """The language model's config: the top level, or its text_config (Qwen3.5's composite config)."""
        return self.config[self.text_config_key] if self.text_config_key else self.config

    def layers_of(self, mixer: str) -> list[int]:
        """Indices of the layers whose token mixer is ``mixer``."""
        return [i for i, k in enumerate(self.layer_kinds) if k.mixer == mixer]

    def unbuilt_kinds(self) -> list[str]:
        """The token mixers of this model the compiler has no layer writer for (empty: it builds)."""
        return sorted({k.mixer for k in self.layer_kinds} - BUILT_MIXERS)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def generation_for(self, thinking: bool) -> GenerationSettings:
        """Token ids and sampling for an artifact whose chat template thinks (or not)."""
        return generation_settings(dict(self.text_config), dict(self.generation_config), self.family, thinking)


@dataclass(frozen=True)
class ArchitectureRule:
    family: str
    model_type: str
    qkv_bias: Callable[[Mapping[str, Any]], bool]
    qk_norm: bool
    rotary_module: str
    decoder_layer: str
    tie_default: bool  # transformers' default for tie_word_embeddings in this config class
    intermediate_default: int = 22016  # transformers' default intermediate_size (Qwen2Config, Qwen3Config)
    text_config_key: str = ""  # a composite config keeps the language model under this key
    hybrid: bool = False  # layer_types / full_attention_interval mix linear and full attention (Qwen3.5)
    norm_offset: bool = False
    attn_output_gate: bool = False
    partial_rotary_default: float = 1.0
    head_dim_default: int = 0  # 0: hidden // heads
    # multi-axis rotary (t, h, w) with the axes' pairs interleaved, whatever mrope_interleaved says
    # (transformers' Qwen3.5 rotary always recomposes so): the pairs per axis where the config names none
    mrope_default: tuple[int, ...] = ()


RULES: dict[str, ArchitectureRule] = {
    # Qwen2, Qwen2.5 and its Coder / Math models: q/k/v bias always (Qwen2Attention builds them so)
    "Qwen2ForCausalLM": ArchitectureRule("qwen2", "qwen2", lambda c: True, False,
                                         "transformers.models.qwen2.modeling_qwen2:Qwen2RotaryEmbedding",
                                         "transformers.models.qwen2.modeling_qwen2:Qwen2DecoderLayer", False),
    # Qwen3 dense: q_norm / k_norm, explicit head_dim, bias only when attention_bias says so
    "Qwen3ForCausalLM": ArchitectureRule("qwen3", "qwen3", lambda c: bool(c.get("attention_bias", False)), True,
                                         "transformers.models.qwen3.modeling_qwen3:Qwen3RotaryEmbedding",
                                         "transformers.models.qwen3.modeling_qwen3:Qwen3DecoderLayer", False),
}
# Qwen3.5 (transformers models/qwen3_5): 3 of 4 layers Gated DeltaNet, every 4th gated full attention with
# q/k norm, head_dim 256, partial multi-axis rotary; offset RMSNorm. Published as the multimodal
# ConditionalGeneration (text under text_config; tie_word_embeddings read at the top level, where
# transformers reads it) or text-only as ForCausalLM (Qwen3_5TextConfig at the top level).
_QWEN35 = dict(family="qwen3_5", qkv_bias=lambda c: bool(c.get("attention_bias", False)), qk_norm=True,
               rotary_module="transformers.models.qwen3_5.modeling_qwen3_5:Qwen3_5TextRotaryEmbedding",
               decoder_layer="transformers.models.qwen3_5.modeling_qwen3_5:Qwen3_5DecoderLayer",
               tie_default=False, intermediate_default=12288, hybrid=True, norm_offset=True, attn_output_gate=True,
               partial_rotary_default=0.25, head_dim_default=256, mrope_default=(11, 11, 10))
RULES["Qwen3_5ForConditionalGeneration"] = ArchitectureRule(model_type="qwen3_5", text_config_key="text_config",
                                                            **_QWEN35)  # type: ignore[arg-type]
RULES["Qwen3_5ForCausalLM"] = ArchitectureRule(model_type="qwen3_5_text", **_QWEN35)  # type: ignore[arg-type]
# Qwen3.5's own defaults where its config leaves a linear-attention size out (Qwen3_5TextConfig)
LINEAR_DEFAULTS = {"linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
                   "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4}


def supported() -> str:
    return ", ".join(f"{a} ({r.family})" for a, r in RULES.items())


def parse_spec(config: Mapping[str, Any], generation: Mapping[str, Any] | None = None,
               tensor_names: Collection[str] | None = None, where: str = CONFIG) -> ModelSpec:
    """The spec of a checkpoint. ``tensor_names``: the checkpoint's tensors, where known: a checkpoint
    without an output matrix can only be tied, whatever its config says (transformers would otherwise
    initialise one at random)."""
    generation = generation or {}
    archs = config.get("architectures") or []
    # transformers' Auto classes go by model_type when a config names no architecture
    by_type = {r.model_type: a for a, r in RULES.items()}
    if not archs and config.get("model_type") not in by_type:
        raise SpecError(f"{where} names no architecture; supported: {supported()}")
    arch = archs[0] if archs else by_type[config["model_type"]]
    rule = RULES.get(arch)
    if rule is None:
        raise SpecError(f"architecture {arch} is not supported; edgeqwen builds {supported()}")
    top = config
    if rule.text_config_key:
        config = config.get(rule.text_config_key)  # type: ignore[assignment]
        if not isinstance(config, Mapping):
            raise SpecError(f"{where}: {arch} keeps the language model under '{rule.text_config_key}', which is "
                            f"missing or not an object")
        where = f"{where} ({rule.text_config_key})"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise SpecError(f"{where}: '{key}' is missing or not an integer")
    if config.get("use_sliding_window"):  # transformers would window layers past max_window_layers
        raise SpecError(f"{where}: sliding-window attention (use_sliding_window true) is not supported; edgeqwen's "
                        "graphs attend over the whole context: set it false if the model was trained without it")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads  # transformers: None means multi-head attention
    head_dim = config.get("head_dim") or rule.head_dim_default or hidden // heads
    if heads % kv_heads:
        raise SpecError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    # transformers ties by the top-level config's flag (a composite config's text_config flag is not read)
    tied = bool(top.get("tie_word_embeddings", rule.tie_default))
    if tensor_names is not None and "lm_head.weight" not in tensor_names:
        tied = True
    generation_ids = generation_settings(dict(config), dict(generation), rule.family, False)
    layers = config["num_hidden_layers"]
    kinds = _layer_kinds(config, layers, where) if rule.hybrid else (FULL_ATTENTION,) * layers
    linear = _linear_attention(config, where) if LINEAR_ATTENTION in kinds else None
    return ModelSpec(
        architecture=arch, family=rule.family, model_type=str(top.get("model_type", rule.model_type)),
        hidden=hidden, layers=layers, heads=heads, kv_heads=int(kv_heads), head_dim=int(head_dim),
        intermediate=int(config.get("intermediate_size", rule.intermediate_default)), vocab=config["vocab_size"],
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        positions=int(config.get("max_position_embeddings", 32768)),
        qkv_bias=rule.qkv_bias(config), qk_norm=rule.qk_norm, tied=tied,
        rope=_rope(config, where, rule.partial_rotary_default, rule.mrope_default),
        layer_kinds=kinds, rotary_module=rule.rotary_module, decoder_layer=rule.decoder_layer,
        generation=generation_ids,
        config=MappingProxyType(dict(top)), generation_config=MappingProxyType(dict(generation)),
        text_config_key=rule.text_config_key, norm_offset=rule.norm_offset, attn_output_gate=rule.attn_output_gate,
        linear_attention=linear, mtp_layers=int(config.get("mtp_num_hidden_layers", 0) or 0),
        vision=isinstance(top.get("vision_config"), Mapping),
        vision_tokens=_vision_tokens(top, where) if isinstance(top.get("vision_config"), Mapping) else (),
    )


def _layer_kinds(config: Mapping[str, Any], layers: int, where: str) -> tuple[LayerKind, ...]:
    """layer_types as written, else transformers' pattern: every full_attention_interval-th layer full."""
    types = config.get("layer_types")
    if types is None:
        every = int(config.get("full_attention_interval", 4))
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise SpecError(f"{where}: layer_types must list one kind per layer ({layers})")
    unknown = sorted({str(k) for k in types} - set(MIXERS))
    if unknown:
        raise SpecError(f"{where}: layer kind '{unknown[0]}' is not supported (known: {', '.join(sorted(MIXERS))})")
    if config.get("mlp_only_layers"):
        raise SpecError(f"{where}: mlp_only_layers is a mixture-of-experts setting; dense Qwen3.5 leaves it empty")
    return tuple(MIXERS[k] for k in types)


def _linear_attention(config: Mapping[str, Any], where: str) -> LinearAttentionSpec:
    d = {k: config.get(k, v) for k, v in LINEAR_DEFAULTS.items()}
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in d.values()):
        raise SpecError(f"{where}: the linear attention sizes ({', '.join(LINEAR_DEFAULTS)}) must be positive integers")
    spec = LinearAttentionSpec(d["linear_num_key_heads"], d["linear_num_value_heads"], d["linear_key_head_dim"],
                               d["linear_value_head_dim"], d["linear_conv_kernel_dim"])
    if spec.v_heads % spec.k_heads:
        raise SpecError(f"{where}: linear_num_value_heads {spec.v_heads} is not a multiple of linear_num_key_heads "
                        f"{spec.k_heads}")
    return spec


def _rope(config: Mapping[str, Any], where: str, partial_default: float = 1.0,
          mrope_default: tuple[int, ...] = ()) -> RopeSpec:
    """rope_parameters (transformers 5) or rope_scaling (4.x), with rope_theta beside it in either; the
    partial factor and multi-axis sections where transformers 5 reads them (inside rope_parameters, or
    partial_rotary_factor at the top, as transformers standardises it). ``mrope_default``: the architecture
    always rotates by interleaved multi-axis sections, these where the config names none."""
    table = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "rope_theta" in config:
        table.setdefault("rope_theta", config["rope_theta"])
    kind = table.get("rope_type", table.get("type", "default"))
    if kind not in STATIC_ROPE_KINDS:
        raise SpecError(f"{where}: rope type '{kind}' is not supported; the exported rotary tables are static "
                        f"({', '.join(sorted(STATIC_ROPE_KINDS))})")
    factor = table.get("factor")
    partial = table.get("partial_rotary_factor", config.get("partial_rotary_factor", partial_default))
    # only an architecture whose rotary is multi-axis reads the sections (Qwen2/Qwen3 ignore them)
    sections = tuple(int(s) for s in table.get("mrope_section") or mrope_default) if mrope_default else ()
    return RopeSpec(kind=kind, theta=float(table.get("rope_theta", 10000.0)),
                    factor=None if factor is None else float(factor), partial_factor=float(partial),
                    table=MappingProxyType(table), sections=sections,
                    interleaved=bool(mrope_default))


# Qwen3_5Config's placeholder ids where a config leaves them out (image, video)
VISION_TOKEN_DEFAULTS = {"image_token_id": 248056, "video_token_id": 248057}


def _vision_tokens(top: Mapping[str, Any], where: str) -> tuple[int, ...]:
    ids = tuple(top.get(k, v) for k, v in VISION_TOKEN_DEFAULTS.items())
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
        raise SpecError(f"{where}: {' and '.join(VISION_TOKEN_DEFAULTS)} must be non-negative integers")
    return ids


def read_spec(folder: Path, tensor_names: Collection[str] | None = None) -> ModelSpec:
    """The spec of a checkpoint folder (config.json, and generation_config.json where present)."""
    folder = Path(folder)
    try:
        config = read_json(folder / CONFIG)
        generation = read_json(folder / "generation_config.json")
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise SpecError(f"{folder}: a config file is not valid JSON ({e})") from None
    if not config:
        raise SpecError(f"{folder} has no config.json; is it a Hugging Face checkpoint folder?")
    return parse_spec(config, generation, tensor_names, where=str(folder / CONFIG))
