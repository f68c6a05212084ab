"""The public Qwen models `edgeqwen plan` chooses from, with their shapes and the tasks Qwen meant them for.

A shape is built from the model's published config.json where one is stored (edgeqwen.model.published:
plan runs without network), through the one parser (edgeqwen.model.spec), so the planner, the compiler
and the fixtures read a config the same way, and a stored config of an architecture the compiler cannot
build yet is listed with the parser's own one-line reason. Where no copy of a model's config was found
its shape is taken from the stored config of a model Qwen published with the same shape (Coder and
Math sizes), or, for the few left, written here as the model card states it (``HAND_SHAPES``).

Only the fields that set size, memory and speed are kept. Sizes count every weight the artifact stores:
tied models keep one vocab x hidden table.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeqwen.build_memory import LayerDims
from edgeqwen.model.published import published_config, published_generation_config, published_models
from edgeqwen.model.spec import ModelSpec, SpecError, parse_spec

QWEN_VOCAB = 151_936
QWEN_VOCAB_UNTIED = 152_064  # the 7B+ Qwen2.5 models pad the vocabulary further


@dataclass(frozen=True)
class Shape:
    family: str  # "qwen2" (Qwen2 / Qwen2.5, q/k/v bias), "qwen3" (q/k norm, explicit head_dim) or "qwen3_5"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int = 0  # 0 here: hidden // heads (set by __post_init__)
    # Qwen3.5: of ``layers``, how many are Gated DeltaNet (a fixed state per sequence, no KV cache), their
    # sizes (k_heads, v_heads, k_dim, v_dim, conv_kernel), and whether q_proj also emits the output gate
    linear_layers: int = 0
    linear: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    gated_query: bool = False

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def head_size(self) -> int:
        return self.head_dim

    @property
    def attention_layers(self) -> int:
        """Layers with full attention (a KV cache): all of them but Qwen3.5's Gated DeltaNet layers."""
        return self.layers - self.linear_layers

    def _linear_sizes(self) -> tuple[int, int, int, int]:
        """(key channels, value channels, value heads, conv channels) of a Gated DeltaNet layer."""
        kh, vh, kd, vd, _ = self.linear
        return kh * kd, vh * vd, vh, 2 * kh * kd + vh * vd

    def linears(self) -> list[tuple[str, int, int, int]]:
        """(role, count, N out, K in) of every matrix multiply weight, lm_head included."""
        q, kv = self.heads * self.head_size, self.kv_heads * self.head_size
        a, h = self.attention_layers, self.hidden
        out = [("attn_qkv", a, (2 * q if self.gated_query else q) + 2 * kv, h), ("attn_o", a, h, q)]
        if self.linear_layers:  # in_proj [qkv | z | b | a] as one MatMul, out_proj
            _, vt, vh, conv = self._linear_sizes()
            out += [("linear_in", self.linear_layers, conv + vt + 2 * vh, h), ("linear_out", self.linear_layers, h, vt)]
        return out + [("mlp_gate_up", self.layers, 2 * self.intermediate, h),
                      ("mlp_down", self.layers, h, self.intermediate), ("lm_head", 1, self.vocab, h)]

    def small_params(self) -> int:
        """Norms, biases, q/k norms (and Gated DeltaNet's conv taps, decay and gated norm): kept in float by
        every profile."""
        q, kv = self.heads * self.head_size, self.kv_heads * self.head_size
        per_layer = 2 * self.hidden + ((q + 2 * kv) if self.family == "qwen2" else 2 * self.head_size)
        total = self.attention_layers * per_layer + self.hidden
        if self.linear_layers:
            _, _, vh, conv = self._linear_sizes()
            total += self.linear_layers * (2 * self.hidden + conv * self.linear[4] + 2 * vh + self.linear[3])
        return total

    @property
    def parameters(self) -> int:
        """Parameters as transformers counts them (a tied table once)."""
        linear = sum(c * n * k for role, c, n, k in self.linears())
        return linear + self.small_params() + (0 if self.tied else self.vocab * self.hidden)

    def layer_dims(self) -> tuple[LayerDims, ...]:
        """Each kind of decoder layer's sizes, for the build's memory (edgeqwen.build_memory)."""
        q, kv, h, i = self.heads * self.head_size, self.kv_heads * self.head_size, self.hidden, self.intermediate
        mlp = ((h, (i, i)), (i, (h,)))
        attention = LayerDims(h, ((h, (2 * q if self.gated_query else q, kv, kv)), (q, (h,)), *mlp),
                              2 * h + ((q + 2 * kv) if self.family == "qwen2" else 2 * self.head_size))
        if not self.linear_layers:
            return (attention,)
        _, vt, vh, conv = self._linear_sizes()
        linear = LayerDims(h, ((h, (conv, vt, vh, vh)), (vt, (h,)), *mlp),
                           2 * h + conv * self.linear[4] + 2 * vh + self.linear[3])
        return attention, linear

    def kv_bytes_per_token(self, itemsize: int) -> int:
        """KV cache bytes per cached position: the full-attention layers only."""
        return 2 * self.attention_layers * self.kv_heads * self.head_size * itemsize

    def fixed_state_bytes(self, itemsize: int) -> int:
        """Bytes of one sequence's fixed states (every Gated DeltaNet layer's conv window and recurrent state),
        whatever the context: allocated per sequence beside the KV cache, read and written every token."""
        if not self.linear_layers:
            return 0
        _, _, vh, conv = self._linear_sizes()
        kd, vd, kernel = self.linear[2], self.linear[3], self.linear[4]
        return self.linear_layers * (conv * (kernel - 1) + vh * kd * vd) * itemsize

    @classmethod
    def of(cls, spec: ModelSpec) -> Shape:
        """The shape of a model the compiler builds (a layer kind it has no writer for: SpecError)."""
        if spec.unbuilt_kinds():
            raise SpecError(f"{spec.architecture}: {', '.join(spec.unbuilt_kinds())} layers are not yet buildable")
        la = spec.linear_attention
        linear = (la.k_heads, la.v_heads, la.k_dim, la.v_dim, la.conv_kernel) if la else (0, 0, 0, 0, 0)
        return cls(spec.family, spec.hidden, spec.layers, spec.heads, spec.kv_heads, spec.intermediate, spec.vocab,
                   spec.tied, spec.head_dim, linear_layers=len(spec.layers_of("linear_attention")), linear=linear,
                   gated_query=spec.attn_output_gate)

    @classmethod
    def from_config(cls, config: dict) -> Shape:
        """The shape of a Hugging Face config.json, through the one parser (edgeqwen.model.spec: an
        architecture it does not know is refused, not read as Qwen2)."""
        return cls.of(parse_spec(config))


@dataclass(frozen=True)
class Model:
    hub_id: str
    shape: Shape | None  # None: not buildable (see ``why_not``)
    context: int  # max_position_embeddings
    tasks: tuple[str, ...]
    note: str = ""
    why_not: str = ""  # set for models the compiler cannot build yet
    shape_from: str = ""  # where the shape was read: a stored config.json, or "model card" (HAND_SHAPES)

    @property
    def name(self) -> str:
        return self.hub_id.split("/")[-1]


TASKS = ("chat", "code", "math", "reasoning")
QWEN3_NOTE = "thinking mode: reasoning tokens count against speed and context"

# The only shapes written by hand: no copy of these models' config.json (nor of one with the same shape)
# was found (edgeqwen/model/configs/SOURCES.md); the numbers are the model cards'.
HAND_SHAPES = {
    "Qwen2.5-14B-Instruct": (Shape("qwen2", 5120, 48, 40, 8, 13824, QWEN_VOCAB_UNTIED, False), 32_768),
    "Qwen2.5-32B-Instruct": (Shape("qwen2", 5120, 64, 40, 8, 27648, QWEN_VOCAB_UNTIED, False), 32_768),
}
# Models whose config.json was not found but which Qwen published with the shape of a stored one (the
# Coder and Math models are Qwen2.5 continued-trained at the same sizes).
SAME_SHAPE = {
    "Qwen2.5-Coder-0.5B-Instruct": "Qwen2.5-0.5B-Instruct", "Qwen2.5-Coder-3B-Instruct": "Qwen2.5-3B-Instruct",
    "Qwen2.5-Coder-7B-Instruct": "Qwen2.5-7B-Instruct", "Qwen2.5-Coder-14B-Instruct": "Qwen2.5-14B-Instruct",
    "Qwen2.5-Coder-32B-Instruct": "Qwen2.5-32B-Instruct", "Qwen2.5-Math-7B-Instruct": "Qwen2.5-7B-Instruct",
    "Qwen2.5-Math-72B-Instruct": "Qwen2.5-72B-Instruct",
}
MATH_CONTEXT = 4096  # the Math models are trained for 4K tokens (Qwen2.5-Math-1.5B-Instruct's config says so)


def _shape(name: str) -> tuple[Shape, int, str]:
    """(shape, context, where it was read) of the model ``name``; SpecError for an architecture the one
    parser does not build yet."""
    if name in published_models():
        spec = parse_spec(published_config(name), published_generation_config(name), where=f"{name}/config.json")
        return Shape.of(spec), spec.positions, f"{name}/config.json"
    if name in HAND_SHAPES:
        shape, context = HAND_SHAPES[name]
        return shape, context, "model card"
    shape, context, where = _shape(SAME_SHAPE[name])
    return shape, context, f"{where} (same shape)"


def entry(hub_id: str, tasks: tuple[str, ...], note: str = "", context: int | None = None,
          why_not: str = "") -> Model:
    """The catalogue entry of ``hub_id``: its shape read from its published config where one is stored;
    a stored config the parser refuses makes the entry unbuildable with the parser's reason."""
    name = hub_id.split("/")[-1]
    if why_not and name not in published_models():
        return Model(hub_id, None, context or 0, tasks, note, why_not)
    try:
        shape, positions, where = _shape(name)
    except SpecError as e:
        return Model(hub_id, None, context or 0, tasks, note, why_not or str(e), f"{name}/config.json")
    return Model(hub_id, shape, context or positions, tasks, note, "", where)


def _q25(size: str, tasks: tuple[str, ...] = ("chat",), kind: str = "", context: int | None = None) -> Model:
    return entry(f"Qwen/Qwen2.5-{kind}{size}-Instruct", tasks, context=context)


QWEN35_WHY_NOT = "config.json not found whole (only the model card's sizes): its shape is not listed"

CATALOGUE: tuple[Model, ...] = (
    *(_q25(s) for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")),
    *(_q25(s, ("code",), kind="Coder-") for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B")),
    # chain-of-thought and tool-integrated reasoning within 4K tokens of context
    *(_q25(s, ("math",), kind="Math-", context=MATH_CONTEXT) for s in ("1.5B", "7B", "72B")),
    # Qwen3: one model for chat and for reasoning (thinking mode), 40,960 positions (32K + generation room).
    *(entry(f"Qwen/Qwen3-{s}", ("chat", "reasoning"), QWEN3_NOTE) for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")),
    Model("Qwen/Qwen3-30B-A3B", None, 40_960, ("chat", "reasoning"),
          why_not="mixture of experts (Qwen3MoeForCausalLM): not yet buildable"),
    Model("Qwen/Qwen3-235B-A22B", None, 40_960, ("chat", "reasoning"),
          why_not="mixture of experts (Qwen3MoeForCausalLM): not yet buildable"),
    # Qwen3.5, made for edge devices; 262,144 positions (text_config). Shapes from the stored configs (0.8B,
    # 4B, 27B); 2B and 9B were found only in part (edgeqwen/model/configs/SOURCES.md).
    *(entry(f"Qwen/Qwen3.5-{s}", ("chat", "reasoning"), QWEN3_NOTE, 262_144, QWEN35_WHY_NOT)
      for s in ("0.8B", "2B", "4B", "9B", "27B")),
    Model("Qwen/Qwen2.5-VL-3B-Instruct", None, 128_000, ("chat",),
          why_not="vision-language (Qwen2_5_VLForConditionalGeneration): not yet buildable"),
    Model("Qwen/Qwen2.5-VL-7B-Instruct", None, 128_000, ("chat",),
          why_not="vision-language (Qwen2_5_VLForConditionalGeneration): not yet buildable"),
)


def find(name: str) -> Model:
    for m in CATALOGUE:
        if name in (m.hub_id, m.name):
            return m
    raise KeyError(name)
