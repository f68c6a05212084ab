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

    def describe(self) -> dict[str, Any]:
        """The table as transformers standardises it (a 4.x ``type`` key also named ``rope_type``)."""
        out = dict(self.table)
        if "type" in out and "rope_type" not in out:
            out["rope_type"] = out["type"]
        return out


@dataclass(frozen=True)
class LayerKind:
    """What one decoder layer is: its token mixer and its feed-forward."""

    mixer: str  # "full_attention" (KV cache); later "linear_attention" (a fixed recurrent state)
    mlp: str  # "dense"; later "moe"


FULL_ATTENTION = LayerKind("full_attention", "dense")
# Rope kinds whose tables do not depend on the running sequence length (the graphs hold static tables).
STATIC_ROPE_KINDS = ("default", "linear", "yarn", "llama3")


@dataclass(frozen=True)
class ModelSpec:
    architecture: str  # config.json's architectures[0], e.g. "Qwen2ForCausalLM"
    family: str  # "qwen2" | "qwen3": chat template behaviour, thinking support
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
    generation: GenerationSettings  # token ids and sampling (thinking off; see generation_for)
    config: Mapping[str, Any]  # the parsed config.json, read-only: for transformers (references, rotary)
    generation_config: Mapping[str, Any]  # the parsed generation_config.json ({} if absent)

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
        return generation_settings(dict(self.config), dict(self.generation_config), self.family, thinking)


@dataclass(frozen=True)
class ArchitectureRule:
    family: str
    model_type: str
    qkv_bias: Callable[[Mapping[str, Any]], bool]
    qk_norm: bool
    rotary_module: str
    tie_default: bool  # transformers' default for tie_word_embeddings in this config class
    intermediate_default: int = 22016  # transformers' default intermediate_size (Qwen2Config, Qwen3Config)


RULES: dict[str, ArchitectureRule] = {
    # Qwen2, Qwen2.5 and its Coder / Math models: q/k/v bias always (Qwen2Attention builds them so)
    "Qwen2ForCausalLM": ArchitectureRule("qwen2", "qwen2", lambda c: True, False,
                                         "transformers.models.qwen2.modeling_qwen2:Qwen2RotaryEmbedding", False),
    # Qwen3 dense: q_norm / k_norm, explicit head_dim, bias only when attention_bias says so
    "Qwen3ForCausalLM": ArchitectureRule("qwen3", "qwen3", lambda c: bool(c.get("attention_bias", False)), True,
                                         "transformers.models.qwen3.modeling_qwen3:Qwen3RotaryEmbedding", False),
}


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
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise SpecError(f"{where}: '{key}' is missing or not an integer")
    if config.get("use_sliding_window"):  # transformers would window layers past max_window_layers
        raise SpecError(f"{where}: sliding-window attention (use_sliding_window true) is not supported; edgeqwen's "
                        "graphs attend over the whole context: set it false if the model was trained without it")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads  # transformers: None means multi-head attention
    head_dim = config.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise SpecError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    tied = bool(config.get("tie_word_embeddings", rule.tie_default))
    if tensor_names is not None and "lm_head.weight" not in tensor_names:
        tied = True
    generation_ids = generation_settings(dict(config), dict(generation), rule.family, False)
    layers = config["num_hidden_layers"]
    return ModelSpec(
        architecture=arch, family=rule.family, model_type=str(config.get("model_type", rule.model_type)),
        hidden=hidden, layers=layers, heads=heads, kv_heads=int(kv_heads), head_dim=int(head_dim),
        intermediate=int(config.get("intermediate_size", rule.intermediate_default)), vocab=config["vocab_size"],
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        positions=int(config.get("max_position_embeddings", 32768)),
        qkv_bias=rule.qkv_bias(config), qk_norm=rule.qk_norm, tied=tied, rope=_rope(config, where),
        layer_kinds=(FULL_ATTENTION,) * layers, rotary_module=rule.rotary_module, generation=generation_ids,
        config=MappingProxyType(dict(config)), generation_config=MappingProxyType(dict(generation)),
    )


def _rope(config: Mapping[str, Any], where: str) -> RopeSpec:
    """rope_parameters (transformers 5) or rope_scaling (4.x), with rope_theta beside it in either."""
    table = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "rope_theta" in config:
        table.setdefault("rope_theta", config["rope_theta"])
    kind = table.get("rope_type", table.get("type", "default"))
    if kind not in STATIC_ROPE_KINDS:
        raise SpecError(f"{where}: rope type '{kind}' is not supported; the exported rotary tables are static "
                        f"({', '.join(sorted(STATIC_ROPE_KINDS))})")
    factor = table.get("factor")
    return RopeSpec(kind=kind, theta=float(table.get("rope_theta", 10000.0)),
                    factor=None if factor is None else float(factor),
                    partial_factor=float(config.get("partial_rotary_factor", 1.0)), table=MappingProxyType(table))


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
