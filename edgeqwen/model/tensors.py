"""Checkpoint tensor names by role, per family: the one place that spells them.

As gguf-py's TensorNameMap: the exporters, the static exporter, the references, the parity weight
reader, the weight check, GPTQ's overrides and the LoRA merge ask for a role ("layer 3's k projection
bias", "the output matrix") and get the checkpoint's name for it. Stdlib only.

Qwen2 / Qwen3 checkpoints (transformers' state-dict names):
    model.embed_tokens.weight                      [V, H]
    model.layers.{i}.input_layernorm.weight        [H]
    model.layers.{i}.self_attn.{q,k,v}_proj.weight [q_dim | kv_dim, H]   (+ .bias when qkv_bias)
    model.layers.{i}.self_attn.{q,k}_norm.weight   [head_dim]            (qk_norm)
    model.layers.{i}.self_attn.o_proj.weight       [H, q_dim]
    model.layers.{i}.post_attention_layernorm.weight [H]
    model.layers.{i}.mlp.{gate,up}_proj.weight     [I, H]
    model.layers.{i}.mlp.down_proj.weight          [H, I]
    model.norm.weight                              [H]
    lm_head.weight                                 [V, H]  (absent when tied: the embedding serves)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

from edgeqwen.model.spec import ModelSpec

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
# The decoder linear layers by their module path inside a layer (GPTQ group overrides, LoRA targets).
ATTENTION_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_LINEARS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class LayerTensors:
    """One decoder layer's tensors; None where the spec says the layer has no such tensor."""

    input_norm: str
    q: str
    k: str
    v: str
    q_bias: str | None
    k_bias: str | None
    v_bias: str | None
    q_norm: str | None
    k_norm: str | None
    o: str
    post_norm: str
    gate: str
    up: str
    down: str

    @property
    def qkv(self) -> tuple[str, str, str]:
        return self.q, self.k, self.v

    @property
    def qkv_bias(self) -> tuple[str, str, str] | None:
        return None if self.q_bias is None else (self.q_bias, self.k_bias, self.v_bias)  # type: ignore[return-value]

    def linears(self) -> tuple[str, ...]:
        """Every weight matrix, in the order the layer applies them."""
        return self.q, self.k, self.v, self.o, self.gate, self.up, self.down


@dataclass(frozen=True)
class TensorMap:
    embed: str  # [V, H]
    final_norm: str  # [H]
    lm_head: str  # [V, H] "lm_head.weight"; a tied checkpoint's file may leave it out (see output_matrix)
    layer_prefix: str  # "model.layers." : layer i's tensors start with f"{layer_prefix}{i}."
    tied: bool
    layers: tuple[LayerTensors, ...]

    def layer(self, i: int) -> LayerTensors:
        return self.layers[i]

    def module(self, i: int, linear: str) -> str:
        """The module path of a decoder linear layer (``linear`` one of ATTENTION_LINEARS + MLP_LINEARS)."""
        return f"{self.layer_prefix}{i}.{linear}"

    def output_matrix(self, present: Collection[str]) -> str:
        """The tensor the output matrix is read from in a source holding ``present``: lm_head.weight where
        the source has one (an untied model, or a quantised copy that stores the output apart), else the
        embedding (a tied checkpoint, whose file leaves lm_head.weight out)."""
        return self.lm_head if self.lm_head in present else self.embed

    def linear_weights(self) -> list[str]:
        """Every decoder linear layer's weight (what LoRA adapts and GPTQ quantises), layer by layer."""
        return [n for t in self.layers for n in t.linears()]

    def parameter(self, name: str) -> str:
        """transformers' parameter path (``model.get_parameter``) of checkpoint tensor ``name``: the same
        string for Qwen2 / Qwen3, whose modules are named as their state dict. References load weights
        through this, never by assuming the two namespaces agree (transformers 5 fuses MoE experts at load)."""
        if name not in self._known:
            raise KeyError(f"{name} is not a tensor of this model")
        return name

    def checkpoint_name(self, parameter: str) -> str:
        """The inverse of ``parameter``: the checkpoint tensor a transformers parameter is read from."""
        if parameter not in self._known:
            raise KeyError(f"transformers parameter {parameter} has no checkpoint tensor in the tensor map")
        return parameter

    @cached_property
    def _known(self) -> frozenset[str]:
        return frozenset(self.names()) | {self.lm_head}

    def names(self) -> list[str]:
        """Every tensor the checkpoint must hold, each once (a tied table once)."""
        out = [self.embed]
        for t in self.layers:
            out += [n for n in (t.input_norm, *t.qkv, t.q_bias, t.k_bias, t.v_bias, t.q_norm, t.k_norm, t.o,
                                t.post_norm, t.gate, t.up, t.down) if n is not None]
        out.append(self.final_norm)
        if not self.tied:
            out.append(self.lm_head)
        return out


def _qwen_layer(i: int, spec: ModelSpec) -> LayerTensors:
    p = f"model.layers.{i}"
    a = f"{p}.self_attn"
    bias = (lambda n: f"{a}.{n}_proj.bias") if spec.qkv_bias else (lambda n: None)
    norm = (lambda n: f"{a}.{n}_norm.weight") if spec.qk_norm else (lambda n: None)
    return LayerTensors(
        input_norm=f"{p}.input_layernorm.weight",
        q=f"{a}.q_proj.weight", k=f"{a}.k_proj.weight", v=f"{a}.v_proj.weight",
        q_bias=bias("q"), k_bias=bias("k"), v_bias=bias("v"), q_norm=norm("q"), k_norm=norm("k"),
        o=f"{a}.o_proj.weight", post_norm=f"{p}.post_attention_layernorm.weight",
        gate=f"{p}.mlp.gate_proj.weight", up=f"{p}.mlp.up_proj.weight", down=f"{p}.mlp.down_proj.weight",
    )


def tensor_map(spec: ModelSpec) -> TensorMap:
    """The names of ``spec``'s tensors (Qwen2 and Qwen3 share transformers' layout)."""
    if spec.family not in ("qwen2", "qwen3"):
        raise ValueError(f"no tensor map for family {spec.family}")
    return TensorMap(embed=EMBED, final_norm="model.norm.weight", lm_head=LM_HEAD, layer_prefix="model.layers.",
                     tied=spec.tied, layers=tuple(_qwen_layer(i, spec) for i in range(spec.layers)))


def checkpoint_layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor a checkpoint of ``spec`` holds, in the order transformers saves them
    (fixture writers; the plan's byte counts)."""
    names = tensor_map(spec)
    h, hd, q, kv, inter = spec.hidden, spec.head_dim, spec.q_dim, spec.kv_dim, spec.intermediate
    rows: list[tuple[str, tuple[int, ...]]] = [(names.embed, (spec.vocab, h))]
    for t in names.layers:
        rows += [(t.input_norm, (h,)), (t.q, (q, h)), (t.k, (kv, h)), (t.v, (kv, h))]
        if t.q_bias is not None and t.k_bias is not None and t.v_bias is not None:
            rows += [(t.q_bias, (q,)), (t.k_bias, (kv,)), (t.v_bias, (kv,))]
        if t.q_norm is not None and t.k_norm is not None:
            rows += [(t.q_norm, (hd,)), (t.k_norm, (hd,))]
        rows += [(t.o, (h, q)), (t.post_norm, (h,)), (t.gate, (inter, h)), (t.up, (inter, h)), (t.down, (h, inter))]
    rows.append((names.final_norm, (h,)))
    if not spec.tied:
        rows.append((names.lm_head, (spec.vocab, h)))
    return rows
