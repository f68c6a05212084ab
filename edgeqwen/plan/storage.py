"""What a genai profile stores per weight, read from its Olive passes, and the bytes that makes for a shape.

The rules mirror what the build writes (tests compare them with the initializers of real builds of every
genai profile): ModelBuilder's own int4 keeps the embedding in float beside an int4 lm_head; Olive's
block-wise RTN passes quantise the embedding too (a pass may name the lm_head and embedding nodes it
takes, e.g. 8 bits for them and 4 for the rest), and a tied model then stores one table (the lm_head's
blocks, read by GatherBlockQuantized), as float profiles do. Stdlib only: `edgeqwen plan` runs without
the compiler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeqwen.plan.catalogue import Shape
from edgeqwen.targets import TORCH_PASSES, TargetProfile, rtn_roles, table_block


@dataclass(frozen=True)
class Format:
    bits: int  # 32, 16 (float) or 8, 4 (blocks)
    block: int = 0  # quantisation block along K (0: float)
    symmetric: bool = True
    # Olive's PyTorch passes (GPTQ): a layer whose K the block does not divide takes the largest power-of-two
    # block that does (edgeqwen.compiler.torch_quant.group_overrides); ONNX RTN pads K to whole blocks instead
    divides: bool = False

    @property
    def kind(self) -> str:
        return f"int{self.bits}" if self.block else f"fp{self.bits}"

    def matrix_bytes(self, n: int, k: int, scale_bytes: int) -> int:
        """Bytes of one [N, K] weight: MatMulNBits B + scales (+ zero points) for block formats."""
        if not self.block:
            return n * k * self.bits // 8
        block = self.block
        while self.divides and k % block and block > 16:
            block //= 2
        if self.divides and k % block:  # no power-of-two block divides K: one per row
            block = 1 << (k - 1).bit_length()
        kb = math.ceil(k / block)
        zero = 0 if self.symmetric else n * math.ceil(kb * self.bits / 8)
        return n * kb * (block * self.bits // 8 + scale_bytes) + zero


@dataclass(frozen=True)
class Storage:
    weights: Format  # decoder linear layers
    lm_head: Format
    embedding: Format | None  # a quantised table (shared with a tied lm_head); None: a float table
    float_bytes: int  # activations, KV cache, scales, norms, rotary tables: 4 (fp32) or 2 (fp16)

    @property
    def kind(self) -> str:
        """The kernel family of the decoder layers (most of the bytes): what speed is fitted per."""
        return self.weights.kind

    def linear_bytes(self, shape: Shape) -> int:
        return sum(c * (self.lm_head if role == "lm_head" else self.weights).matrix_bytes(n, k, self.float_bytes)
                   for role, c, n, k in shape.linears())


def storage(profile: TargetProfile) -> Storage:
    """The storage a genai profile's passes produce (static-shape profiles are not planned)."""
    passes = list(profile.olive_passes)
    roles: dict[str, Format] = {}
    while passes and passes[0].type in TORCH_PASSES:  # Olive's PyTorch passes before the builder: the layers
        o = passes.pop(0).options
        roles.setdefault("weights", Format(int(o.get("bits", 4)), int(o.get("group_size", 128)),
                                           bool(o.get("sym", False)), divides=True))
    mb = passes[0].options
    extra = dict(mb.get("extra_options") or {})
    precision = str(mb.get("precision", "fp32"))
    dml = profile.execution_provider == "dml"
    io = 2 if precision == "fp16" or (precision == "int4" and dml) else 4
    base = Format(4, int(extra.get("int4_block_size", 32))) if precision == "int4" else Format(8 * io)
    for p in passes[1:]:
        if p.type == "OnnxBlockWiseRtnQuantization":
            o = p.options
            fmt = Format(int(o.get("bits", 4)), int(o.get("block_size", 128)), bool(o.get("is_symmetric", True)))
            for role in rtn_roles(o, f"profile {profile.name}"):
                roles.setdefault(role, fmt)
    return Storage(roles.get("weights", base), roles.get("lm_head", base), roles.get("embedding"), io)


def weight_bytes(shape: Shape, s: Storage, positions: int) -> int:
    """Bytes of every initializer the build writes for ``shape`` (model.onnx.data and inline)."""
    v, h = shape.vocab, shape.hidden
    head = s.lm_head
    if shape.tied and s.embedding is not None and head.block and head.symmetric and table_block(head.block, h):
        head = Format(head.bits, table_block(head.block, h), head.symmetric)  # as the exporter stores it
        s = Storage(s.weights, head, s.embedding, s.float_bytes)
    emb = s.embedding
    if not shape.tied and emb is not None and emb.block and emb.symmetric and table_block(emb.block, h):
        s = Storage(s.weights, head, Format(emb.bits, table_block(emb.block, h), emb.symmetric), s.float_bytes)
    total = s.linear_bytes(shape)
    # A tied table is stored once when the embedding can read the lm_head's own storage: float (the lm_head
    # MatMul reads the embedding) or symmetric blocks dividing the hidden size (GatherBlockQuantized).
    shared = shape.tied and (not head.block or (s.embedding is not None and head.symmetric and h % head.block == 0))
    if not shared:
        if s.embedding is not None and not shape.tied and s.embedding.symmetric and h % s.embedding.block == 0:
            total += s.embedding.matrix_bytes(v, h, s.float_bytes)
        else:
            total += v * h * s.float_bytes
    # cos/sin are a constant subgraph onnxruntime folds at load: the file holds inv_freq [head/2] and
    # start, limit, delta, scale, all float64 (the folded tables, 2 x positions x head/2, are in memory only)
    rotary = (shape.head_size // 2 + 4) * 8
    return total + shape.small_params() * s.float_bytes + rotary


def decode_bytes(shape: Shape, s: Storage, depth: int) -> int:
    """Bytes one decode step reads: every matrix multiply weight once (the embedding only one row) and the
    KV cache up to ``depth``."""
    return s.linear_bytes(shape) + depth * shape.kv_bytes_per_token(s.float_bytes)


def matmul_params(shape: Shape) -> int:
    """Multiply-adds per token in the decoder's matrix multiplies (prefill's compute; the lm_head runs for
    the last position only when the profile prunes it)."""
    return sum(c * n * k for role, c, n, k in shape.linears() if role != "lm_head")
