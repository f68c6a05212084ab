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
from dataclasses import dataclass, replace

from edgeqwen.plan.catalogue import Shape
from edgeqwen.profile_passes import Stored, read_passes
from edgeqwen.targets import TargetProfile, table_block


def matrix_bytes(fmt: Stored, n: int, k: int, scale_bytes: int) -> int:
    """Bytes of one [N, K] weight stored as ``fmt``: MatMulNBits B + scales (+ zero points) for blocks."""
    if fmt.is_float:
        return n * k * fmt.bits // 8
    block = fmt.block
    while fmt.divides and k % block and block > 16:
        block //= 2
    if fmt.divides and k % block:  # no power-of-two block divides K: one per row
        block = 1 << (k - 1).bit_length()
    kb = math.ceil(k / block)
    zero = 0 if fmt.symmetric else n * math.ceil(kb * fmt.bits / 8)
    return n * kb * (block * fmt.bits // 8 + scale_bytes) + zero


@dataclass(frozen=True)
class Storage:
    weights: Stored  # decoder linear layers
    lm_head: Stored
    embedding: Stored | None  # a quantised table (shared with a tied lm_head); None: a float table
    float_bytes: int  # activations, KV cache, scales, norms, rotary tables: 4 (fp32) or 2 (fp16)
    prune_lm_head: bool  # the lm_head runs for the last position only

    @property
    def kind(self) -> str:
        """The kernel family of the decoder layers (most of the bytes): what speed is fitted per."""
        return self.weights.kind

    def linear_bytes(self, shape: Shape) -> int:
        return sum(c * matrix_bytes(self.lm_head if role == "lm_head" else self.weights, n, k, self.float_bytes)
                   for role, c, n, k in shape.linears())


def storage(profile: TargetProfile) -> Storage:
    """The storage a genai profile's passes produce, as the build reads them (edgeqwen.profile_passes;
    static-shape profiles are not planned)."""
    p = read_passes(profile)
    return Storage(p.weights, p.lm_head, p.embedding, p.io_bytes, p.prune_lm_head)


def weight_bytes(shape: Shape, s: Storage, positions: int) -> int:
    """Bytes of every initializer the build writes for ``shape`` (model.onnx.data and inline)."""
    v, h = shape.vocab, shape.hidden
    head = s.lm_head
    if shape.tied and s.embedding is not None and head.block and table_block(head.block, h):
        head = replace(head, block=table_block(head.block, h))  # as the exporter stores it
        s = replace(s, lm_head=head)
    emb = s.embedding
    if not shape.tied and emb is not None and emb.block and table_block(emb.block, h):
        s = replace(s, lm_head=head, embedding=replace(emb, block=table_block(emb.block, h)))
    total = s.linear_bytes(shape)
    # A tied table is stored once when the embedding can read the lm_head's own storage: float (the lm_head
    # MatMul reads the embedding) or blocks dividing the hidden size (GatherBlockQuantized); asymmetric
    # blocks add the zero points as the gather reads them, one byte per block.
    shared = shape.tied and (not head.block or (s.embedding is not None and h % head.block == 0))
    if shared and head.block and not head.symmetric:
        total += v * (h // head.block)
    if not shared:
        if s.embedding is not None and not shape.tied and h % s.embedding.block == 0:
            total += matrix_bytes(s.embedding, v, h, s.float_bytes)
            total += 0 if s.embedding.symmetric else v * (h // s.embedding.block)
        else:
            total += v * h * s.float_bytes
    # cos/sin are a constant subgraph onnxruntime folds at load: the file holds inv_freq [head/2] and
    # start, limit, delta, scale, all float64 (the folded tables, 2 x positions x head/2, are in memory only)
    rotary = (shape.head_size // 2 + 4) * 8
    return total + shape.small_params() * s.float_bytes + rotary


def decode_bytes(shape: Shape, s: Storage, depth: int) -> int:
    """Bytes one decode step reads: every matrix multiply weight once (the embedding only one row) and the
    KV cache up to ``depth``."""
    return s.linear_bytes(shape) + depth * shape.kv_bytes_per_token(s.float_bytes) + \
        2 * shape.fixed_state_bytes(s.float_bytes)  # a fixed state is read and written every token


def matmul_params(shape: Shape, s: Storage) -> int:
    """Multiply-adds per token in the decoder's matrix multiplies (prefill's compute; the lm_head counts only
    when the profile runs it for every position, not just the last)."""
    return sum(c * n * k for role, c, n, k in shape.linears() if role != "lm_head" or not s.prune_lm_head)
