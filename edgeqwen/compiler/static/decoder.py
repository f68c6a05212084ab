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

from collections.abc import Mapping

import numpy as np
import onnx

from edgeqwen.compiler.static.graph import FLOAT, INT32, GraphWriter
from edgeqwen.model.spec import ModelSpec
from edgeqwen.model.tensors import TensorMap

# Finite, so a fully masked (padding) row gives a uniform softmax instead of NaN, and small enough
# for fp16 accelerators (NNAPI's relaxed fp32) to hold scores + mask.
MASK_VALUE = -10000.0
# The lm_head Gemm's node name: profiles can single it out (e.g. keep it out of uint8 quantisation).
LM_HEAD_NODE = "lm_head"


class Weights:
    """Checkpoint tensors as fp32 numpy arrays by checkpoint name (``names`` says which is which), plus the
    rotary tables cos/sin [S, D]. A graph initializer is named as the tensor it holds."""

    def __init__(self, tensors: Mapping[str, np.ndarray], names: TensorMap, cos: np.ndarray, sin: np.ndarray) -> None:
        self.t = tensors
        self.names = names
        self.cos, self.sin = cos, sin
        self.tied = names.tied

    def __getitem__(self, name: str) -> np.ndarray:
        return self.t[name]

    @property
    def lm_head(self) -> np.ndarray:
        return self.t[self.names.embed] if self.tied else self.t[self.names.lm_head]


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


def attention(g: GraphWriter, w: Weights, spec: ModelSpec, i: int, x: str, c: int, s: int,
              tables: dict[str, str]) -> str:
    t = w.names.layer(i)
    d, nh, nkv = spec.head_dim, spec.heads, spec.kv_heads
    weight = lambda name, value=None: g.weight(name, w[name] if value is None else value)
    scale = np.float32(d ** -0.5)
    # 1/sqrt(D) is folded into q: into its weight and bias, or, after q_norm, into the norm's weight.
    q_w = w[t.q] * (1.0 if spec.qk_norm else scale)
    q_b = w[t.q_bias] * scale if t.q_bias is not None else None
    q = linear(g, x, weight(t.q, q_w), weight(t.q_bias, q_b) if t.q_bias is not None else None)
    k = linear(g, x, weight(t.k), weight(t.k_bias) if t.k_bias is not None else None)
    v = linear(g, x, weight(t.v), weight(t.v_bias) if t.v_bias is not None else None)
    q = g.op("Reshape", [q, g.const([c, nh, d])])  # [C, H, D]
    k = g.op("Reshape", [k, g.const([c, nkv, d])])  # [C, KV, D]
    if t.q_norm is not None and t.k_norm is not None:
        q = rms_norm(g, q, weight(t.q_norm, w[t.q_norm] * scale), spec.rms_eps)
        k = rms_norm(g, k, weight(t.k_norm), spec.rms_eps)
    q = rotary(g, q, c, nh, d, tables["cos"], tables["sin"], tables["rot"])
    k = rotary(g, k, c, nkv, d, tables["cos"], tables["sin"], tables["rot"])
    q = g.op("Transpose", [q], perm=[1, 0, 2])  # [H, C, D]
    k = g.op("Transpose", [k], perm=[1, 0, 2], name=f"present_key_{i}")  # [KV, C, D]
    v = g.op("Transpose", [g.op("Reshape", [v, g.const([c, nkv, d])])], perm=[1, 0, 2], name=f"present_value_{i}")
    keys = g.op("Concat", [f"past_key_{i}", k], axis=1)  # [KV, S + C, D]
    values = g.op("Concat", [f"past_value_{i}", v], axis=1)
    # Grouped-query attention without repeating K/V: the G query heads of one KV head are stacked
    # along the row axis, so one batched MatMul per KV head covers them: [KV, G*C, D] x [KV, D, S+C].
    qg = g.op("Reshape", [q, g.const([nkv, spec.group * c, d])])
    scores = g.op("MatMul", [qg, g.op("Transpose", [keys], perm=[0, 2, 1])])
    scores = g.op("Add", [scores, tables["mask"]])
    # onnxruntime's NNAPI Softmax builder takes only 2-D or 4-D input: softmax over rows of a 2-D view
    rows = g.op("Reshape", [scores, g.const([nkv * spec.group * c, s + c])])
    probs = g.op("Reshape", [g.op("Softmax", [rows], axis=-1), g.const([nkv, spec.group * c, s + c])])
    out = g.op("MatMul", [probs, values])  # [KV, G*C, D]
    out = g.op("Reshape", [out, g.const([nh, c, d])])
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[1, 0, 2]), g.const([c, nh * d])])
    return linear(g, out, weight(t.o))


def mlp(g: GraphWriter, w: Weights, i: int, x: str) -> str:
    t = w.names.layer(i)
    gate = linear(g, x, g.weight(t.gate, w[t.gate]))
    up = linear(g, x, g.weight(t.up, w[t.up]))
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # SiLU(gate) * up
    return linear(g, act, g.weight(t.down, w[t.down]))


def decoder_graph(w: Weights, dims: ModelSpec, chunk: int, cache: int, name: str) -> onnx.ModelProto:
    c, s, d = chunk, cache, dims.head_dim
    names = w.names
    g = GraphWriter(name)
    ids = g.input("input_ids", INT32, [c])
    pos = g.input("position_ids", INT32, [c])
    mask = g.input("attention_mask", FLOAT, [c, s + c])
    for i in range(dims.layers):
        g.input(f"past_key_{i}", FLOAT, [dims.kv_heads, s, d])
        g.input(f"past_value_{i}", FLOAT, [dims.kv_heads, s, d])

    embed = g.weight(names.embed, w[names.embed])
    cos = g.op("Reshape", [g.op("Gather", [g.weight("cos_table", w.cos), pos], axis=0), g.const([c, 1, d])])
    sin = g.op("Reshape", [g.op("Gather", [g.weight("sin_table", w.sin), pos], axis=0), g.const([c, 1, d])])
    tiled = g.op("Concat", [mask] * dims.group, axis=0) if dims.group > 1 else mask  # [G*C, S+C]
    tables = {"cos": cos, "sin": sin, "rot": g.weight("rotate_half", rotate_half_matrix(d)), "mask": tiled}

    h = g.op("Gather", [embed, ids], axis=0)  # [C, hidden]
    for i in range(dims.layers):
        t = names.layer(i)
        x = rms_norm(g, h, g.weight(t.input_norm, w[t.input_norm]), dims.rms_eps)
        h = g.op("Add", [h, attention(g, w, dims, i, x, c, s, tables)])
        x = rms_norm(g, h, g.weight(t.post_norm, w[t.post_norm]), dims.rms_eps)
        h = g.op("Add", [h, mlp(g, w, i, x)])
        g.output(f"present_key_{i}", f"present_key_{i}", FLOAT, [dims.kv_heads, c, d])
        g.output(f"present_value_{i}", f"present_value_{i}", FLOAT, [dims.kv_heads, c, d])
    if c > 1:  # only the last position's logits are needed: the lm_head runs on one row
        h = g.op("Slice", [h, g.const([c - 1]), g.const([c]), g.const([0])])
    h = rms_norm(g, h, g.weight(names.final_norm, w[names.final_norm]), dims.rms_eps)
    lm_head = embed if w.tied else g.weight(names.lm_head, w.lm_head)
    g.output(linear(g, h, lm_head, node_name=LM_HEAD_NODE), "logits", FLOAT, [1, dims.vocab])
    return g.model()
