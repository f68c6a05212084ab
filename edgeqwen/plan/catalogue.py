"""The public Qwen models `edgeqwen plan` chooses from, with their shapes as their published configs give
them (config.json on the Hub, copied here: plan runs without network) and the tasks Qwen meant them for.

Only the fields that set size, memory and speed are kept. Sizes count every weight the artifact stores:
tied models keep one vocab x hidden table.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeqwen.model.spec import ModelSpec, parse_spec

QWEN_VOCAB = 151_936
QWEN_VOCAB_UNTIED = 152_064  # the 7B+ Qwen2.5 models pad the vocabulary further


@dataclass(frozen=True)
class Shape:
    family: str  # "qwen2" (Qwen2 / Qwen2.5, q/k/v bias) or "qwen3" (q/k norm, explicit head_dim)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int = 0  # 0 here: hidden // heads (set by __post_init__)

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def head_size(self) -> int:
        return self.head_dim

    def linears(self) -> list[tuple[str, int, int, int]]:
        """(role, count, N out, K in) of every matrix multiply weight, lm_head included."""
        q, kv = self.heads * self.head_size, self.kv_heads * self.head_size
        return [("attn_qkv", self.layers, q + 2 * kv, self.hidden), ("attn_o", self.layers, self.hidden, q),
                ("mlp_gate_up", self.layers, 2 * self.intermediate, self.hidden),
                ("mlp_down", self.layers, self.hidden, self.intermediate), ("lm_head", 1, self.vocab, self.hidden)]

    def small_params(self) -> int:
        """Norms, biases and q/k norms: kept in float by every profile."""
        q, kv = self.heads * self.head_size, self.kv_heads * self.head_size
        per_layer = 2 * self.hidden + ((q + 2 * kv) if self.family == "qwen2" else 2 * self.head_size)
        return self.layers * per_layer + self.hidden

    @property
    def parameters(self) -> int:
        """Parameters as transformers counts them (a tied table once)."""
        linear = sum(c * n * k for role, c, n, k in self.linears())
        return linear + self.small_params() + (0 if self.tied else self.vocab * self.hidden)

    def kv_bytes_per_token(self, itemsize: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_size * itemsize

    @classmethod
    def of(cls, spec: ModelSpec) -> Shape:
        return cls(spec.family, spec.hidden, spec.layers, spec.heads, spec.kv_heads, spec.intermediate, spec.vocab,
                   spec.tied, spec.head_dim)

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

    @property
    def name(self) -> str:
        return self.hub_id.split("/")[-1]


TASKS = ("chat", "code", "math", "reasoning")


def _q25(size: str, shape: Shape, tasks: tuple[str, ...] = ("chat",), context: int = 32_768, kind: str = "") -> Model:
    return Model(f"Qwen/Qwen2.5-{kind}{size}-Instruct", shape, context, tasks)


# Qwen2.5 shapes (Qwen2.5 / -Coder / -Math share them where the size exists).
_Q25 = {
    "0.5B": Shape("qwen2", 896, 24, 14, 2, 4864, QWEN_VOCAB, True),
    "1.5B": Shape("qwen2", 1536, 28, 12, 2, 8960, QWEN_VOCAB, True),
    "3B": Shape("qwen2", 2048, 36, 16, 2, 11008, QWEN_VOCAB, True),
    "7B": Shape("qwen2", 3584, 28, 28, 4, 18944, QWEN_VOCAB_UNTIED, False),
    "14B": Shape("qwen2", 5120, 48, 40, 8, 13824, QWEN_VOCAB_UNTIED, False),
    "32B": Shape("qwen2", 5120, 64, 40, 8, 27648, QWEN_VOCAB_UNTIED, False),
    "72B": Shape("qwen2", 8192, 80, 64, 8, 29568, QWEN_VOCAB_UNTIED, False),
}
_Q3 = {
    "0.6B": (Shape("qwen3", 1024, 28, 16, 8, 3072, QWEN_VOCAB, True, 128)),
    "1.7B": (Shape("qwen3", 2048, 28, 16, 8, 6144, QWEN_VOCAB, True, 128)),
    "4B": (Shape("qwen3", 2560, 36, 32, 8, 9728, QWEN_VOCAB, True, 128)),
    "8B": (Shape("qwen3", 4096, 36, 32, 8, 12288, QWEN_VOCAB, False, 128)),
    "14B": (Shape("qwen3", 5120, 40, 40, 8, 17408, QWEN_VOCAB, False, 128)),
    "32B": (Shape("qwen3", 5120, 64, 64, 8, 25600, QWEN_VOCAB, False, 128)),
}

CATALOGUE: tuple[Model, ...] = (
    *(_q25(s, _Q25[s]) for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")),
    *(_q25(s, _Q25[s], ("code",), kind="Coder-") for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B")),
    # The Math models are trained for 4K tokens of context (chain-of-thought and tool-integrated reasoning).
    *(_q25(s, _Q25[s], ("math",), context=4096, kind="Math-") for s in ("1.5B", "7B", "72B")),
    # Qwen3: one model for chat and for reasoning (thinking mode), 40,960 positions (32K + generation room).
    *(Model(f"Qwen/Qwen3-{s}", _Q3[s], 40_960, ("chat", "reasoning"),
            note="thinking mode: reasoning tokens count against speed and context") for s in _Q3),
    Model("Qwen/Qwen3-30B-A3B", None, 40_960, ("chat", "reasoning"),
          why_not="mixture of experts (Qwen3MoeForCausalLM): not yet buildable"),
    Model("Qwen/Qwen3-235B-A22B", None, 40_960, ("chat", "reasoning"),
          why_not="mixture of experts (Qwen3MoeForCausalLM): not yet buildable"),
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
