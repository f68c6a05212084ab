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

Qwen3.5 (Qwen3_5ForConditionalGeneration: the text model under model.language_model., a vision tower
under model.visual. and a multi-token-prediction layer under mtp., both left to other readers;
Qwen3_5ForCausalLM as saved by transformers: under model., read from model.language_model. too):
    {text}.layers.{i}.linear_attn.in_proj_qkv.weight [2 Kt + Vt, H]  q, k, v channels of the conv (Kt = k_heads x k_dim)
    {text}.layers.{i}.linear_attn.in_proj_z.weight   [Vt, H]         the gated norm's gate (Vt = v_heads x v_dim)
    {text}.layers.{i}.linear_attn.in_proj_{b,a}.weight [v_heads, H]  beta (write strength), a (decay input)
    {text}.layers.{i}.linear_attn.conv1d.weight      [2 Kt + Vt, 1, kernel]  depthwise causal conv
    {text}.layers.{i}.linear_attn.{dt_bias,A_log}    [v_heads]       decay: exp(-exp(A_log) softplus(a + dt_bias))
    {text}.layers.{i}.linear_attn.norm.weight        [v_dim]         gated RMSNorm (plain weight, not offset)
    {text}.layers.{i}.linear_attn.out_proj.weight    [H, Vt]
    {text}.layers.{i}.self_attn.q_proj.weight        [2 q_dim, H]    every 4th layer: query and output gate
    (the rest of a full-attention layer, the MLP and norms as Qwen3's; RMSNorm weights applied as 1 + w)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from edgeqwen.model.spec import ModelSpec

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


@dataclass(frozen=True)
class LayerTensors:
    """One decoder layer's tensors; None where the spec says the layer has no such tensor."""

    mixer: ClassVar[str] = "full_attention"  # the token mixer these tensors belong to (LayerKind.mixer)
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

    def input_groups(self) -> tuple[tuple[str, ...], ...]:
        """The weight matrices grouped by the activation they multiply (one GPTQ Hessian each): the normed
        hidden states (q, k, v), the attention output (o), the normed residual (gate, up), the MLP's (down)."""
        return (self.q, self.k, self.v), (self.o,), (self.gate, self.up), (self.down,)

    def names(self) -> list[str]:
        return [n for n in (self.input_norm, *self.qkv, self.q_bias, self.k_bias, self.v_bias, self.q_norm,
                            self.k_norm, self.o, self.post_norm, self.gate, self.up, self.down) if n is not None]


@dataclass(frozen=True)
class LinearAttentionLayerTensors:
    """One Gated DeltaNet decoder layer's tensors (Qwen3.5's linear_attention layers)."""

    mixer: ClassVar[str] = "linear_attention"
    input_norm: str
    qkv: str  # in_proj_qkv [2 Kt + Vt, H]
    z: str  # in_proj_z [Vt, H]
    b: str  # in_proj_b [v_heads, H]
    a: str  # in_proj_a [v_heads, H]
    conv: str  # conv1d.weight [2 Kt + Vt, 1, kernel]
    dt_bias: str  # [v_heads]
    a_log: str  # A_log [v_heads]
    norm: str  # [v_dim]
    out: str  # out_proj [H, Vt]
    post_norm: str
    gate: str
    up: str
    down: str

    def linears(self) -> tuple[str, ...]:
        """Every weight matrix, in the order the layer applies them."""
        return self.qkv, self.z, self.b, self.a, self.out, self.gate, self.up, self.down

    def input_groups(self) -> tuple[tuple[str, ...], ...]:
        """As LayerTensors.input_groups: the four input projections read the normed hidden states (and the
        graph runs them as one MatMul), out_proj the gated norm's output, then the MLP's two."""
        return (self.qkv, self.z, self.b, self.a), (self.out,), (self.gate, self.up), (self.down,)

    def names(self) -> list[str]:
        return [self.input_norm, self.qkv, self.z, self.b, self.a, self.conv, self.dt_bias, self.a_log, self.norm,
                self.out, self.post_norm, self.gate, self.up, self.down]


@dataclass(frozen=True)
class TensorMap:
    embed: str  # [V, H]
    final_norm: str  # [H]
    lm_head: str  # [V, H] "lm_head.weight"; a tied checkpoint's file may leave it out (see output_matrix)
    layer_prefix: str  # "model.layers." : layer i's tensors start with f"{layer_prefix}{i}."
    tied: bool
    layers: tuple[LayerTensors | LinearAttentionLayerTensors, ...]
    # checkpoint prefix -> the prefix of the parameter in the text model the references load, where the two
    # differ (Qwen3.5's model.language_model.)
    renamed: tuple[tuple[str, str], ...] = ()
    ignored_prefixes: tuple[str, ...] = ()  # tensors the checkpoint may hold that the text model does not read

    def layer(self, i: int) -> LayerTensors:
        """Layer ``i``'s tensors: a full-attention layer (every layer of Qwen2 / Qwen3)."""
        t = self.layers[i]
        if not isinstance(t, LayerTensors):
            raise TypeError(f"layer {i} is a linear-attention layer (linear_layer)")
        return t

    def linear_layer(self, i: int) -> LinearAttentionLayerTensors:
        t = self.layers[i]
        if not isinstance(t, LinearAttentionLayerTensors):
            raise TypeError(f"layer {i} is a full-attention layer (layer)")
        return t

    def inner_path(self, i: int, name: str) -> str:
        """Checkpoint tensor ``name`` of layer ``i`` as a path inside that decoder layer's module, e.g.
        model.language_model.layers.3.linear_attn.in_proj_z.weight -> linear_attn.in_proj_z.weight."""
        prefix = f"{self.layer_prefix}{i}."
        if not name.startswith(prefix):
            raise KeyError(f"{name} is not a tensor of layer {i}")
        return name[len(prefix):]

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
        for src, dst in self.renamed:
            if name.startswith(src):
                return dst + name[len(src):]
        return name

    def checkpoint_name(self, parameter: str) -> str:
        """The inverse of ``parameter``: the checkpoint tensor a transformers parameter is read from."""
        name = parameter
        for src, dst in self.renamed:
            if parameter.startswith(dst):
                name = src + parameter[len(dst):]
        if name not in self._known:
            raise KeyError(f"transformers parameter {parameter} has no checkpoint tensor in the tensor map")
        return name

    @cached_property
    def _known(self) -> frozenset[str]:
        return frozenset(self.names()) | {self.lm_head}

    def names(self) -> list[str]:
        """Every tensor the checkpoint must hold, each once (a tied table once)."""
        out = [self.embed]
        for t in self.layers:
            out += t.names()
        out.append(self.final_norm)
        if not self.tied:
            out.append(self.lm_head)
        return out


def _qwen_layer(i: int, spec: ModelSpec, layers: str = "model.layers.") -> LayerTensors:
    p = f"{layers}{i}"
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


def _linear_layer(i: int, layers: str) -> LinearAttentionLayerTensors:
    p = f"{layers}{i}"
    a = f"{p}.linear_attn"
    return LinearAttentionLayerTensors(
        input_norm=f"{p}.input_layernorm.weight", qkv=f"{a}.in_proj_qkv.weight", z=f"{a}.in_proj_z.weight",
        b=f"{a}.in_proj_b.weight", a=f"{a}.in_proj_a.weight", conv=f"{a}.conv1d.weight", dt_bias=f"{a}.dt_bias",
        a_log=f"{a}.A_log", norm=f"{a}.norm.weight", out=f"{a}.out_proj.weight",
        post_norm=f"{p}.post_attention_layernorm.weight", gate=f"{p}.mlp.gate_proj.weight",
        up=f"{p}.mlp.up_proj.weight", down=f"{p}.mlp.down_proj.weight")


MULTIMODAL_TEXT = "model.language_model."  # Qwen3.5's text model inside the multimodal checkpoint
QWEN35_IGNORED = ("model.visual.", "mtp.")  # the vision tower and the multi-token-prediction layer


def tensor_map(spec: ModelSpec, present: Collection[str] | None = None) -> TensorMap:
    """The names of ``spec``'s tensors. Qwen2 and Qwen3 share transformers' layout; Qwen3.5 adds the
    linear-attention layers and, multimodal, the model.language_model. prefix. ``present``: the checkpoint's
    tensor names where known (a text-only Qwen3.5 may be stored under either prefix)."""
    if spec.family in ("qwen2", "qwen3"):
        return TensorMap(embed=EMBED, final_norm="model.norm.weight", lm_head=LM_HEAD, layer_prefix="model.layers.",
                         tied=spec.tied, layers=tuple(_qwen_layer(i, spec) for i in range(spec.layers)))
    if spec.family != "qwen3_5":
        raise ValueError(f"no tensor map for family {spec.family}")
    # The references load the text model (AutoModelForCausalLM gives Qwen3_5ForCausalLM, also from a multimodal
    # checkpoint), whose parameters are under model.: transformers strips model.language_model. at load
    text = MULTIMODAL_TEXT if spec.text_config_key else "model."
    if not spec.text_config_key and present is not None and f"{MULTIMODAL_TEXT}embed_tokens.weight" in present:
        text = MULTIMODAL_TEXT
    renamed = ((MULTIMODAL_TEXT, "model."),) if text == MULTIMODAL_TEXT else ()
    layers = f"{text}layers."
    kinds = [k.mixer for k in spec.layer_kinds]
    return TensorMap(embed=f"{text}embed_tokens.weight", final_norm=f"{text}norm.weight", lm_head=LM_HEAD,
                     layer_prefix=layers, tied=spec.tied, renamed=renamed, ignored_prefixes=QWEN35_IGNORED,
                     layers=tuple(_linear_layer(i, layers) if m == "linear_attention" else _qwen_layer(i, spec, layers)
                                  for i, m in enumerate(kinds)))


def checkpoint_layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor a checkpoint of ``spec`` holds, in the order transformers saves them
    (fixture writers; the plan's byte counts)."""
    names = tensor_map(spec)
    h, hd, q, kv, inter = spec.hidden, spec.head_dim, spec.q_dim, spec.kv_dim, spec.intermediate
    rows: list[tuple[str, tuple[int, ...]]] = [(names.embed, (spec.vocab, h))]
    la = spec.linear_attention
    for t in names.layers:
        if isinstance(t, LinearAttentionLayerTensors):
            assert la is not None
            rows += [(t.input_norm, (h,)), (t.qkv, (la.conv_dim, h)), (t.z, (la.value_total, h)),
                     (t.b, (la.v_heads, h)), (t.a, (la.v_heads, h)), (t.conv, (la.conv_dim, 1, la.conv_kernel)),
                     (t.dt_bias, (la.v_heads,)), (t.a_log, (la.v_heads,)), (t.norm, (la.v_dim,)),
                     (t.out, (h, la.value_total)), (t.post_norm, (h,)), (t.gate, (inter, h)), (t.up, (inter, h)),
                     (t.down, (h, inter))]
            continue
        rows += [(t.input_norm, (h,)), (t.q, (2 * q if spec.attn_output_gate else q, h)), (t.k, (kv, h)), (t.v, (kv, h))]
        if t.q_bias is not None and t.k_bias is not None and t.v_bias is not None:
            rows += [(t.q_bias, (q,)), (t.k_bias, (kv,)), (t.v_bias, (kv,))]
        if t.q_norm is not None and t.k_norm is not None:
            rows += [(t.q_norm, (hd,)), (t.k_norm, (hd,))]
        rows += [(t.o, (h, q)), (t.post_norm, (h,)), (t.gate, (inter, h)), (t.up, (inter, h)), (t.down, (h, inter))]
    rows.append((names.final_norm, (h,)))
    if not spec.tied:
        rows.append((names.lm_head, (spec.vocab, h)))
    return rows


def linear_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(N out, K in) of every decoder linear layer's weight, by checkpoint name."""
    names = set(tensor_map(spec).linear_weights())
    return {n: (shape[0], shape[1]) for n, shape in checkpoint_layout(spec) if n in names}


def mtp_layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the multi-token-prediction tensors a published Qwen3.5 checkpoint carries beside the
    text model (``mtp_layers`` of them; transformers does not build them, the text build leaves them unread):
    a projection of [embedding | hidden] back to the hidden size, its two input norms, one gated-attention
    decoder layer, a final norm. The fixture writers add them so a checkpoint looks as Qwen ships it."""
    h, inter, hd = spec.hidden, spec.intermediate, spec.head_dim
    rows: list[tuple[str, tuple[int, ...]]] = [("mtp.fc.weight", (h, 2 * h)), ("mtp.pre_fc_norm_embedding.weight", (h,)),
                                               ("mtp.pre_fc_norm_hidden.weight", (h,)), ("mtp.norm.weight", (h,))]
    for i in range(spec.mtp_layers):
        p, a = f"mtp.layers.{i}", f"mtp.layers.{i}.self_attn"
        rows += [(f"{p}.input_layernorm.weight", (h,)), (f"{a}.q_proj.weight", (2 * spec.q_dim, h)),
                 (f"{a}.k_proj.weight", (spec.kv_dim, h)), (f"{a}.v_proj.weight", (spec.kv_dim, h)),
                 (f"{a}.o_proj.weight", (h, spec.q_dim)), (f"{a}.q_norm.weight", (hd,)), (f"{a}.k_norm.weight", (hd,)),
                 (f"{p}.post_attention_layernorm.weight", (h,)), (f"{p}.mlp.gate_proj.weight", (inter, h)),
                 (f"{p}.mlp.up_proj.weight", (inter, h)), (f"{p}.mlp.down_proj.weight", (h, inter))]
    return rows
