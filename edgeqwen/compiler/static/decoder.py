"""One static-shape Qwen2/Qwen3 decoder graph (batch 1, chunk C, KV cache length S).

Inputs                                     Outputs
  input_ids       int32 [C]                  logits           float [1, V]   (last chunk position)
  position_ids    int32 [C]                  present_key_i    float [KV, C, D]
  attention_mask  float [C, S + C]           present_value_i  float [KV, C, D]
  past_key_i      float [KV, S, D]
  past_value_i    float [KV, S, D]

The runtime left-pads a short chunk, so the last position is always the one whose logits are
needed; the additive mask (0 or MASK_VALUE) hides padding and empty cache slots. Keys are stored
after rotary. Every weight multiply is a 2-D Gemm with a constant [out, in] weight (transB=1), which
is NNAPI's FULLY_CONNECTED layout, so tied embeddings serve the Gather and the lm_head unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgeqwen.compiler.static.graph import FLOAT, INT32, GraphWriter

# Finite, so a fully masked (padding) row gives a uniform softmax instead of NaN, and small enough
# for fp16 accelerators (NNAPI's relaxed fp32) to hold scores + mask.
MASK_VALUE = -10000.0
# The lm_head Gemm's node name: profiles can single it out (e.g. keep it out of uint8 quantisation).
LM_HEAD_NODE = "lm_head"


@dataclass(frozen=True)
class Dims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    qk_norm: bool  # Qwen3: RMSNorm over each head's q and k before rotary
    qkv_bias: bool  # Qwen2: q/k/v projections have a bias

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


class Weights:
    """Checkpoint tensors as fp32 numpy arrays, named as in transformers' state dict, plus the rotary
    tables cos/sin [S, D] and the attention scale already folded where it is free."""

    def __init__(self, tensors: dict[str, np.ndarray], cos: np.ndarray, sin: np.ndarray, tied: bool) -> None:
        self.t = tensors
        self.cos, self.sin = cos, sin
        self.tied = tied

    def __getitem__(self, name: str) -> np.ndarray:
        return self.t[name]

    @property
    def lm_head(self) -> np.ndarray:
        return self.t["model.embed_tokens.weight"] if self.tied else self.t["lm_head.weight"]


def rotate_half_matrix(d: int) -> np.ndarray:
    """R [D, D] with x @ R == rotate_half(x) == concat(-x[D/2:], x[:D/2]): a constant 2-D MatMul
    instead of Slice/Neg/Concat on every head."""
    r = np.zeros((d, d), dtype=np.float32)
    half = d // 2
    for j in range(half):
        r[j + half, j] = -1.0
        r[j, j + half] = 1.0
    return r


def rms_norm(g: GraphWriter, x: str, weight: str, eps: float) -> str:
    """x * w / sqrt(mean(x^2, last axis) + eps), as Qwen's RMSNorm computes it in fp32."""
    var = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
    denom = g.op("Sqrt", [g.op("Add", [var, g.const(eps, np.float32)])])
    return g.op("Mul", [g.op("Div", [x, denom]), weight])


def linear(g: GraphWriter, x: str, weight: str, bias: str | None = None, node_name: str | None = None) -> str:
    return g.op("Gemm", [x, weight] + ([bias] if bias else []), node_name=node_name, transB=1)


def rotary(g: GraphWriter, x3: str, rows: int, heads: int, d: int, cos: str, sin: str, rot: str) -> str:
    """x3 [C, H, D] -> x3 * cos + rotate_half(x3) * sin, with cos/sin [C, 1, D]."""
    rotated = g.op("MatMul", [g.op("Reshape", [x3, g.const([rows * heads, d])]), rot])
    rotated = g.op("Reshape", [rotated, g.const([rows, heads, d])])
    return g.op("Add", [g.op("Mul", [x3, cos]), g.op("Mul", [rotated, sin])])


def attention(g: GraphWriter, w: Weights, dims: Dims, i: int, x: str, c: int, s: int, tables: dict[str, str]) -> str:
    p = f"model.layers.{i}.self_attn."
    d, nh, nkv = dims.head_dim, dims.heads, dims.kv_heads
    bias = (lambda n: g.weight(p + n + ".bias", w[p + n + ".bias"])) if dims.qkv_bias else (lambda n: None)
    scale = np.float32(d ** -0.5)
    # 1/sqrt(D) is folded into q: into its weight and bias, or, after q_norm, into the norm's weight.
    q_w = w[p + "q_proj.weight"] * (1.0 if dims.qk_norm else scale)
    q_b = w[p + "q_proj.bias"] * scale if dims.qkv_bias else None
    q = linear(g, x, g.weight(p + "q_proj.weight", q_w), g.weight(p + "q_proj.bias", q_b) if q_b is not None else None)
    k = linear(g, x, g.weight(p + "k_proj.weight", w[p + "k_proj.weight"]), bias("k_proj"))
    v = linear(g, x, g.weight(p + "v_proj.weight", w[p + "v_proj.weight"]), bias("v_proj"))
    q = g.op("Reshape", [q, g.const([c, nh, d])])  # [C, H, D]
    k = g.op("Reshape", [k, g.const([c, nkv, d])])  # [C, KV, D]
    if dims.qk_norm:
        q = rms_norm(g, q, g.weight(p + "q_norm.weight", w[p + "q_norm.weight"] * scale), dims.eps)
        k = rms_norm(g, k, g.weight(p + "k_norm.weight", w[p + "k_norm.weight"]), dims.eps)
    q = rotary(g, q, c, nh, d, tables["cos"], tables["sin"], tables["rot"])
    k = rotary(g, k, c, nkv, d, tables["cos"], tables["sin"], tables["rot"])
    q = g.op("Transpose", [q], perm=[1, 0, 2])  # [H, C, D]
    k = g.op("Transpose", [k], perm=[1, 0, 2], name=f"present_key_{i}")  # [KV, C, D]
    v = g.op("Transpose", [g.op("Reshape", [v, g.const([c, nkv, d])])], perm=[1, 0, 2], name=f"present_value_{i}")
    keys = g.op("Concat", [f"past_key_{i}", k], axis=1)  # [KV, S + C, D]
    values = g.op("Concat", [f"past_value_{i}", v], axis=1)
    # Grouped-query attention without repeating K/V: the G query heads of one KV head are stacked
    # along the row axis, so one batched MatMul per KV head covers them: [KV, G*C, D] x [KV, D, S+C].
    qg = g.op("Reshape", [q, g.const([nkv, dims.group * c, d])])
    scores = g.op("MatMul", [qg, g.op("Transpose", [keys], perm=[0, 2, 1])])
    scores = g.op("Add", [scores, tables["mask"]])
    # onnxruntime's NNAPI Softmax builder takes only 2-D or 4-D input: softmax over rows of a 2-D view
    rows = g.op("Reshape", [scores, g.const([nkv * dims.group * c, s + c])])
    probs = g.op("Reshape", [g.op("Softmax", [rows], axis=-1), g.const([nkv, dims.group * c, s + c])])
    out = g.op("MatMul", [probs, values])  # [KV, G*C, D]
    out = g.op("Reshape", [out, g.const([nh, c, d])])
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[1, 0, 2]), g.const([c, nh * d])])
    return linear(g, out, g.weight(p + "o_proj.weight", w[p + "o_proj.weight"]))


def mlp(g: GraphWriter, w: Weights, i: int, x: str) -> str:
    p = f"model.layers.{i}.mlp."
    gate = linear(g, x, g.weight(p + "gate_proj.weight", w[p + "gate_proj.weight"]))
    up = linear(g, x, g.weight(p + "up_proj.weight", w[p + "up_proj.weight"]))
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # SiLU(gate) * up
    return linear(g, act, g.weight(p + "down_proj.weight", w[p + "down_proj.weight"]))


def decoder_graph(w: Weights, dims: Dims, chunk: int, cache: int, name: str) -> onnx.ModelProto:
    c, s, d = chunk, cache, dims.head_dim
    g = GraphWriter(name)
    ids = g.input("input_ids", INT32, [c])
    pos = g.input("position_ids", INT32, [c])
    mask = g.input("attention_mask", FLOAT, [c, s + c])
    for i in range(dims.layers):
        g.input(f"past_key_{i}", FLOAT, [dims.kv_heads, s, d])
        g.input(f"past_value_{i}", FLOAT, [dims.kv_heads, s, d])

    embed = g.weight("model.embed_tokens.weight", w["model.embed_tokens.weight"])
    cos = g.op("Reshape", [g.op("Gather", [g.weight("cos_table", w.cos), pos], axis=0), g.const([c, 1, d])])
    sin = g.op("Reshape", [g.op("Gather", [g.weight("sin_table", w.sin), pos], axis=0), g.const([c, 1, d])])
    tiled = g.op("Concat", [mask] * dims.group, axis=0) if dims.group > 1 else mask  # [G*C, S+C]
    tables = {"cos": cos, "sin": sin, "rot": g.weight("rotate_half", rotate_half_matrix(d)), "mask": tiled}

    h = g.op("Gather", [embed, ids], axis=0)  # [C, hidden]
    for i in range(dims.layers):
        p = f"model.layers.{i}."
        x = rms_norm(g, h, g.weight(p + "input_layernorm.weight", w[p + "input_layernorm.weight"]), dims.eps)
        h = g.op("Add", [h, attention(g, w, dims, i, x, c, s, tables)])
        x = rms_norm(g, h, g.weight(p + "post_attention_layernorm.weight", w[p + "post_attention_layernorm.weight"]), dims.eps)
        h = g.op("Add", [h, mlp(g, w, i, x)])
        g.output(f"present_key_{i}", f"present_key_{i}", FLOAT, [dims.kv_heads, c, d])
        g.output(f"present_value_{i}", f"present_value_{i}", FLOAT, [dims.kv_heads, c, d])
    if c > 1:  # only the last position's logits are needed: the lm_head runs on one row
        h = g.op("Slice", [h, g.const([c - 1]), g.const([c]), g.const([0])])
    h = rms_norm(g, h, g.weight("model.norm.weight", w["model.norm.weight"]), dims.eps)
    lm_head = embed if w.tied else g.weight("lm_head.weight", w.lm_head)
    g.output(linear(g, h, lm_head, node_name=LM_HEAD_NODE), "logits", FLOAT, [1, dims.vocab])
    return g.model()
