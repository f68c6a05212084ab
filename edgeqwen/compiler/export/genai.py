"""The dynamic-KV decoder graph for onnxruntime-genai, written tensor by tensor.

The graph is the one Olive's ModelBuilder pass writes for Qwen2/Qwen3 (same ops, inputs, outputs and
genai_config.json, so the pinned onnxruntime-genai and our own backends load it unchanged), with what
our graph passes used to fix already right: logits named as genai_config says, the tied embedding read
from the lm_head's table (stored once), rotary tables from transformers' own rope code.

Two layouts, as the builder does per execution provider:
  fused (CPU): one qkv MatMul [H, q+2kv]; GroupQueryAttention applies the rotary embedding itself.
  split (DirectML): q, k, v MatMuls apart, RotaryEmbedding ops fed by a ``position_ids`` input.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeqwen.compiler.checkpoint import Checkpoint
from edgeqwen.compiler.export import hybrid
from edgeqwen.compiler.export.data_file import DataFile
from edgeqwen.compiler.export.weights import (
    MS,
    FloatWeights,
    NBitsWeights,
    Sink,
    WeightFormat,
    linear,
)
from edgeqwen.model.spec import ModelSpec
from edgeqwen.model.tensors import TensorMap
from edgeqwen.safetensors_io import CheckpointTensors
from edgeqwen.targets import table_block

MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"
MASK = "/model/attn_mask_reformat/attn_mask_subgraph"


@dataclass(frozen=True)
class GenaiPlan:
    io_dtype: np.dtype  # activations, KV cache, logits, norm weights
    weights: WeightFormat  # every decoder linear layer
    lm_head: WeightFormat
    quantized_embedding: bool  # GatherBlockQuantized (sharing the lm_head's blocks when tied) vs a float table
    layout: str  # "fused" | "split"
    prune_lm_head: bool  # logits of the last position only (the profile says: edgeqwen.profile_passes)
    execution_provider: str = "cpu"  # named in genai_config.json's provider options
    embedding: WeightFormat | None = None  # an untied quantised table's format (None: the layers' format)


def shared_head_block(plan: GenaiPlan, hidden: int, tied: bool) -> GenaiPlan:
    """Quantised tables in a block GatherBlockQuantized can read (edgeqwen.targets.table_block): a tied
    model's lm_head (shared with the embedding, rather than storing the table twice), an untied embedding."""
    role = "lm_head" if tied else "embedding"
    fmt = getattr(plan, role) if tied or plan.embedding is not None else plan.weights
    if not (plan.quantized_embedding and isinstance(fmt, NBitsWeights)):
        return plan
    block = table_block(fmt.block_size, hidden)
    # an asymmetric table also writes the zero points GatherBlockQuantized reads (one byte per block)
    table = replace(fmt, block_size=block or fmt.block_size, table=block > 0 and not fmt.symmetric)
    return plan if table == fmt else replace(plan, **{role: table})


class Writer:
    """Builds the graph's node list in order while weights stream into the data file."""

    def __init__(self, ckpt: Checkpoint, plan: GenaiPlan, src: CheckpointTensors, data: DataFile,
                 log: Callable[[str], None]) -> None:
        self.shape: ModelSpec = ckpt.spec
        self.names: TensorMap = ckpt.tensors
        # the graph stores one table when the source has no separate output matrix
        self.tied = self.names.output_matrix(src) == self.names.embed
        self.ckpt, self.plan = ckpt, shared_head_block(plan, self.shape.hidden, self.tied)
        self.sink = Sink(data, src, [], [], set())
        self.io = plan.io_dtype
        self.consts: set[str] = set()
        self.log = log
        self.t0 = time.perf_counter()
        self.read = [n for n in src.where if not n.startswith(self.names.ignored_prefixes)]  # vision, mtp: not ours
        self.total_bytes = sum(src.nbytes(n) for n in self.read)

    # -- small helpers -------------------------------------------------------------------------------
    def const(self, values: list[int] | int) -> str:
        """An int64 constant, one initializer per distinct value."""
        name = f"/model/constants/INT64/{values}"
        if name not in self.consts:
            self.sink.inits.append(helper.make_tensor(name, TensorProto.INT64, [len(values)] if isinstance(values, list)
                                                      else [], values if isinstance(values, list) else [values]))
            self.consts.add(name)
        return name

    def vector(self, init: str, name: str) -> str:
        """A 1-D checkpoint tensor (norm weight, bias) in the io type."""
        self.sink.inits.append(self.sink.data.tensor(init, self.sink.src.rows(name).astype(self.io)))
        self.sink.consumed.add(name)
        return init

    def norm_weight(self, init: str, name: str) -> str:
        """An RMSNorm's weight as SimplifiedLayerNormalization multiplies by it: 1 + w where the spec stores
        the offset (Qwen3.5, added in fp32 as transformers does), else as stored."""
        if not self.shape.norm_offset:
            return self.vector(init, name)
        self.sink.inits.append(self.sink.data.tensor(init, (1.0 + self.sink.src.rows(name)).astype(self.io)))
        self.sink.consumed.add(name)
        return init

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        outs = [f"{name}/output_{i}" for i in range(n_out)]
        self.sink.node(op, inputs, outs, name, domain, **attrs)
        return outs

    def linear(self, fmt: WeightFormat, x: str, prefix: str, names: tuple[str, ...]) -> str:
        out = f"{prefix}/MatMul/output_0"
        linear(fmt, self.sink, x, out, prefix, names)
        return out

    def rms(self, x: str, weight: str, name: str) -> str:
        return self.node("SimplifiedLayerNormalization", [x, weight], name, epsilon=self.shape.rms_eps, axis=-1,
                         stash_type=1)[0]

    def rotary(self) -> tuple[np.ndarray, float]:
        """The rotary's inverse frequencies [rotary_dim / 2] (float64) and attention scaling, from transformers'
        own rotary module: in a process of its own for a model whose validation runs its references apart
        (edgeqwen.compiler.passes.rope_caches.rotary_parameters)."""
        from edgeqwen.compiler.passes.rope_caches import rotary_parameters
        from edgeqwen.quality.reference import fits_whole

        inv_freq, scale, _ = rotary_parameters(self.shape, apart=not fits_whole(self.ckpt.parameter_count))
        return inv_freq, scale

    def cos_sin(self, freqs: str, scale: str, q: str) -> tuple[str, str]:
        """cos and sin of float64 angles ``freqs`` times the attention scaling ``scale`` (YaRN's; else 1),
        rounded once to fp32, then to the io type."""
        out = []
        for fn in ("Cos", "Sin"):
            y = self.node(fn, [freqs], f"{q}/{fn}")[0]
            y = self.node("Mul", [y, scale], f"{q}/{fn}/Scale")[0]
            y = self.node("Cast", [y], f"{q}/{fn}/Cast", to=TensorProto.FLOAT)[0]
            if self.io != np.float32:
                y = self.node("Cast", [y], f"{q}/{fn}/CastIO", to=helper.np_dtype_to_tensor_dtype(np.dtype(self.io)))[0]
            out.append(y)
        return out[0], out[1]

    def progress(self, what: str) -> None:
        done = sum(self.sink.src.nbytes(n) for n in self.sink.consumed)
        elapsed = time.perf_counter() - self.t0
        left = elapsed / done * (self.total_bytes - done) if done else 0.0
        written = self.sink.data.size / 2**30
        self.log(f"    {what}: {len(self.sink.consumed)}/{len(self.read)} tensors, "
                 f"{written:.2f} GiB written, {elapsed:.0f} s elapsed, ~{left:.0f} s left")


def write(ckpt: Checkpoint, plan: GenaiPlan, out: Path, log: Callable[[str], None] = lambda s: None,
          weights_from: Path | None = None) -> dict[str, Any]:
    """Write model.onnx, model.onnx.data and genai_config.json into ``out``; returns what it did.
    ``weights_from``: read the tensors from this folder (a checkpoint an Olive pass quantised) instead."""
    from edgeqwen.compiler.export.genai_config import genai_config

    folder, files = (ckpt.path, list(ckpt.weight_files)) if weights_from is None else \
        (weights_from, sorted(p.name for p in weights_from.glob("*.safetensors")))
    with CheckpointTensors(folder, files) as src:
        data = DataFile(out / DATA_FILE)
        try:
            w = Writer(ckpt, plan, src, data, log)
            inputs, outputs = _io(w)
            head = _head_weights(w)
            embedded = _embedding(w, head)
            if w.shape.vision_tokens:
                embedded = hybrid.place_visual_features(w, embedded)
            mask = _mask(w)
            rope = hybrid.multi_axis_rotary(w) if w.shape.rope.sections else _rope(w)
            hidden, residual = embedded, embedded
            for i in range(w.shape.layers):
                hidden, residual = _layer(w, i, hidden, residual, mask, rope)
                w.progress(f"layer {i + 1}/{w.shape.layers}")
            _lm_head(w, hidden, residual, head)
            unused = set(w.read) - w.sink.consumed
            if unused:
                raise RuntimeError(f"checkpoint tensors the graph does not use: {sorted(unused)[:5]}")
        finally:
            data.close()
    graph = helper.make_graph(w.sink.nodes, "edgeqwen-genai", inputs, outputs, initializer=w.sink.inits)
    model = helper.make_model(graph, producer_name="edgeqwen", ir_version=10,
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
    onnx.save_model(model, str(out / MODEL_FILE))
    (out / "genai_config.json").write_text(json.dumps(genai_config(ckpt, plan, w.shape), indent=4))
    return {"seconds": round(time.perf_counter() - w.t0, 1), "data_bytes": data.size,
            "tensors_read": len(w.sink.consumed), "layout": plan.layout, "stacked_sources": w.sink.stacked,
            "prequantized": sorted(w.sink.prequantized)}


def _io(w: Writer) -> tuple[list, list]:
    s, io = w.shape, helper.np_dtype_to_tensor_dtype(np.dtype(w.io))
    kv = ["batch_size", s.kv_heads, "past_sequence_length", s.head_dim]
    present = ["batch_size", s.kv_heads, "total_sequence_length", s.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    if w.plan.layout == "split":
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]))
    elif s.rope.sections:  # mRoPE's t, h, w (edgeqwen.compiler.export.hybrid)
        inputs.append(helper.make_tensor_value_info(hybrid.POSITION_IDS, TensorProto.INT64,
                                                    [3, "batch_size", "sequence_length"]))
    if s.vision_tokens:
        inputs.append(helper.make_tensor_value_info(hybrid.VISUAL_EMBEDS, io, ["visual_tokens", s.hidden]))
    outputs = [helper.make_tensor_value_info("logits", io, ["batch_size", 1 if w.plan.prune_lm_head
                                                              else "sequence_length", s.vocab])]
    for i, kind in enumerate(s.layer_kinds):
        if kind.mixer == "linear_attention":  # a fixed state per sequence (edgeqwen.compiler.export.hybrid)
            shapes = {"conv": hybrid.conv_state_shape(s), "recurrent": hybrid.recurrent_state_shape(s)}
            for role, (past, now) in hybrid.state_names(i).items():
                inputs.append(helper.make_tensor_value_info(past, io, ["batch_size", *shapes[role]]))
                outputs.append(helper.make_tensor_value_info(now, io, ["batch_size", *shapes[role]]))
            continue
        for kv_kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv_kind}", io, kv))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv_kind}", io, present))
    return inputs, outputs


def _head_weights(w: Writer) -> tuple[list[str], int, int]:
    """The lm_head's initializers, written first so a tied embedding can read them: (names, N, K)."""
    source = (w.names.output_matrix(w.sink.src),)
    return w.plan.lm_head.write(w.sink, "lm_head.MatMul.weight", source)  # float: E^T [H, V]


def _embedding(w: Writer, head: tuple[list[str], int, int]) -> str:
    """Token ids -> [batch, seq, H]."""
    s, plan, embed = w.shape, w.plan, w.names.embed
    tied = w.tied
    names = head[0]
    fmt = plan.lm_head if tied else (plan.embedding or plan.weights)
    shareable = isinstance(fmt, NBitsWeights) and s.hidden % fmt.block_size == 0
    if plan.quantized_embedding and shareable:
        if not tied:
            names, _, _ = fmt.write(w.sink, embed, (embed,))  # the builder names a graph tensor as its source
        return _gather_blocks(w, fmt, names)
    if tied and isinstance(plan.lm_head, FloatWeights):
        # the lm_head holds E^T [H, V]; the embedding gathers rows of its transpose (stored once)
        table = w.node("Transpose", [names[0]], "/model/embed_tokens/Transpose", perm=[1, 0])[0]
        return w.node("Gather", [table, "input_ids"], "/model/embed_tokens/Gather", axis=0)[0]
    FloatWeights(w.io).table(w.sink, embed, embed)
    return w.node("Gather", [embed, "input_ids"], "/model/embed_tokens/Gather", axis=0)[0]


def _gather_blocks(w: Writer, fmt: NBitsWeights, names: list[str]) -> str:
    """GatherBlockQuantized on MatMulNBits-layout blocks: B [V, K/block, block*bits/8] is quantised along
    its last axis per row, exactly GatherBlockQuantized's data with quantize_axis=2; only the scales
    ([V * K/block] -> [V, K/block, 1], 1/(2*block/bits) of the table) need a reshape."""
    s = w.shape
    kb = s.hidden // fmt.block_size
    scales = w.node("Reshape", [names[1], w.const([s.vocab, kb, 1])], "/model/embed_tokens/ReshapeScales")[0]
    inputs = [names[0], "input_ids", scales]
    if not fmt.symmetric:  # [V, K/block, 1], one byte per block, as the scales
        inputs.append(w.sink.gather_zero_points[names[0]])
    blocks = w.node("GatherBlockQuantized", inputs, "/model/embed_tokens/GatherBlockQuantized",
                    domain=MS, bits=fmt.bits, block_size=fmt.block_size, gather_axis=0, quantize_axis=2)[0]
    # [batch, seq, K/block, block] -> [batch, seq, H]
    return w.node("Reshape", [blocks, w.const([0, 0, s.hidden])], "/model/embed_tokens/ReshapeHidden")[0]


def _mask(w: Writer) -> tuple[str, str]:
    """GroupQueryAttention's seqlens_k (tokens in the mask - 1) and total_sequence_length, as int32."""
    one = w.const([1])
    total = w.node("ReduceSum", ["attention_mask", one], f"{MASK}/ReduceSum", keepdims=0)[0]
    seqlens = w.node("Sub", [total, one], f"{MASK}/Sub")[0]
    seqlens = w.node("Cast", [seqlens], f"{MASK}/Sub/Cast", to=TensorProto.INT32)[0]
    shape = w.node("Shape", ["attention_mask"], f"{MASK}/Shape")[0]
    length = w.node("Gather", [shape, w.const(1)], f"{MASK}/Gather", axis=0)[0]
    length = w.node("Cast", [length], f"{MASK}/Gather/Cast", to=TensorProto.INT32)[0]
    return seqlens, length


def _rope(w: Writer) -> tuple[str, str]:
    """cos/sin tables [positions, head_dim/2] as a constant subgraph of transformers' own frequencies:
    onnxruntime folds it into the tables when the session loads (bit-identical to tables computed in float64
    and rounded once to fp32), so the artifact stores head_dim/2 + 4 numbers, not 2 x positions x head_dim/2
    (8.4 MB on the Qwen2.5-0.5B shape)."""
    from onnx import numpy_helper

    inv_freq, scale = w.rotary()
    q = "/model/rotary"
    values = {"start": 0.0, "limit": float(w.shape.positions), "delta": 1.0, "scale": scale}
    for name, v in values.items():
        w.sink.inits.append(numpy_helper.from_array(np.array(v, dtype=np.float64), f"rotary.{name}"))
    w.sink.inits.append(numpy_helper.from_array(inv_freq.astype(np.float64).reshape(1, -1), "rotary.inv_freq"))
    pos = w.node("Range", ["rotary.start", "rotary.limit", "rotary.delta"], f"{q}/Range")[0]  # [P] float64
    pos = w.node("Unsqueeze", [pos, w.const([1])], f"{q}/Unsqueeze")[0]  # [P, 1]
    freqs = w.node("Mul", [pos, "rotary.inv_freq"], f"{q}/Mul")[0]  # [P, head_dim/2]
    return w.cos_sin(freqs, "rotary.scale", q)


def _layer(w: Writer, i: int, hidden: str, residual: str, mask: tuple[str, str],
           rope: tuple[str, str] | hybrid.TokenRotary) -> tuple[str, str]:
    """One decoder layer. ``hidden``: the previous layer's MLP output (the embedding for layer 0),
    ``residual``: the running residual sum; ``rope``: the cos/sin tables, or each token's own (mRoPE).
    Returns the same pair for the next layer."""
    t, q = w.names.layers[i], f"/model/layers.{i}"
    w_in = w.norm_weight(t.input_norm, t.input_norm)
    if i == 0:
        normed = w.rms(hidden, w_in, f"{q}/input_layernorm/LayerNorm")
    else:
        outs = [f"{q}/input_layernorm/output_0", "", "", f"{q}/input_layernorm/output_3"]
        w.sink.node("SkipSimplifiedLayerNormalization", [residual, hidden, w_in], outs,
                    f"{q}/input_layernorm/SkipLayerNorm", MS, epsilon=w.shape.rms_eps)
        normed, residual = outs[0], outs[3]
    mixer = w.shape.layer_kinds[i].mixer
    if mixer == "linear_attention":
        attn = hybrid.linear_attention(w, i, normed)
    elif w.shape.attn_output_gate:
        attn = hybrid.gated_attention(w, i, normed, mask, rope, _head_norm)
    else:
        attn = _attention(w, i, normed, mask, rope)
    w_post = w.norm_weight(t.post_norm, t.post_norm)
    outs = [f"{q}/post_attention_layernorm/output_0", "", "", f"{q}/post_attention_layernorm/output_3"]
    w.sink.node("SkipSimplifiedLayerNormalization", [residual, attn, w_post], outs,
                f"{q}/post_attention_layernorm/SkipLayerNorm", MS, epsilon=w.shape.rms_eps)
    return _mlp(w, i, outs[0]), outs[3]


def _attention(w: Writer, i: int, x: str, mask: tuple[str, str], rope: tuple[str, str]) -> str:
    s, src, t = w.shape, w.sink.src, w.names.layer(i)
    q = f"/model/layers.{i}/attn"
    q_dim, kv_dim = s.q_dim, s.kv_dim
    biases = t.qkv_bias  # [q_dim], [kv_dim], [kv_dim] (Qwen2)
    if w.plan.layout == "fused":
        qkv = w.linear(w.plan.weights, x, f"{q}/qkv_proj", t.qkv)
        if biases is not None:
            bias = np.concatenate([src.rows(b) for b in biases]).astype(w.io)
            w.sink.inits.append(w.sink.data.tensor(f"model.layers.{i}.attn.qkv_proj.Add.bias", bias))
            w.sink.consumed.update(biases)
            qkv = w.node("Add", [qkv, f"model.layers.{i}.attn.qkv_proj.Add.bias"], f"{q}/qkv_proj/Add")[0]
        if s.qk_norm:
            qs, ks, vs = w.node("Split", [qkv, w.const([q_dim, kv_dim, kv_dim])], f"{q}/qkv_proj/Split", 3, axis=-1)
            qkv_in = [_head_norm(w, i, "q", qs, q_dim), _head_norm(w, i, "k", ks, kv_dim), vs]
        else:
            qkv_in = [qkv, "", ""]
        rotary = [*rope]
    else:
        parts = []
        for j, (n, dim) in enumerate(zip("qkv", (q_dim, kv_dim, kv_dim))):
            y = w.linear(w.plan.weights, x, f"{q}/{n}_proj", (t.qkv[j],))
            if biases is not None:
                b = w.vector(f"model.layers.{i}.attn.{n}_proj.Add.bias", biases[j])
                y = w.node("Add", [y, b], f"{q}/{n}_proj/Add")[0]
            if s.qk_norm and n != "v":
                y = _head_norm(w, i, n, y, dim)
            if n != "v":
                y = w.node("RotaryEmbedding", [y, "position_ids", *rope], f"{q}/{n}_rotary/RotaryEmbedding",
                           domain=MS, interleaved=0, num_heads=0, rotary_embedding_dim=0)[0]
            parts.append(y)
        qkv_in, rotary = parts, ["", ""]
    out = [f"{q}/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"]
    w.sink.node("GroupQueryAttention",
                [*qkv_in, f"past_key_values.{i}.key", f"past_key_values.{i}.value", *mask, *rotary, "", "", ""],
                out, f"{q}/GroupQueryAttention", MS, num_heads=s.heads, kv_num_heads=s.kv_heads,
                scale=float(1 / np.sqrt(s.head_dim)), softcap=0.0, do_rotary=int(w.plan.layout == "fused"),
                rotary_interleaved=0)
    return w.linear(w.plan.weights, out[0], f"{q}/o_proj", (t.o,))


def _head_norm(w: Writer, i: int, which: str, x: str, dim: int) -> str:
    """Qwen3's per-head RMSNorm of q or k: [B, S, heads*D] -> [B, S*heads, D] -> norm -> back."""
    q, d = f"/model/layers.{i}/attn/{which}_norm", w.shape.head_dim
    t = w.names.layer(i)
    weight = w.norm_weight(f"model.layers.{i}.attn.{which}_norm.layernorm.weight",
                           t.q_norm if which == "q" else t.k_norm)
    y = w.node("Reshape", [x, w.const([0, -1, d])], f"{q}/Reshape_1")[0]
    y = w.rms(y, weight, f"{q}/SimplifiedLayerNormalization")
    return w.node("Reshape", [y, w.const([0, -1, dim])], f"{q}/Reshape_2")[0]


def _mlp(w: Writer, i: int, x: str) -> str:
    t, q = w.names.layers[i], f"/model/layers.{i}/mlp"
    gate = w.linear(w.plan.weights, x, f"{q}/gate_proj", (t.gate,))
    up = w.linear(w.plan.weights, x, f"{q}/up_proj", (t.up,))
    sig = w.node("Sigmoid", [gate], f"{q}/act_fn/Sigmoid")[0]
    act = w.node("Mul", [gate, sig], f"{q}/act_fn/Mul")[0]
    prod = w.node("Mul", [act, up], f"{q}/Mul")[0]
    return w.linear(w.plan.weights, prod, f"{q}/down_proj", (t.down,))


def _lm_head(w: Writer, hidden: str, residual: str, head: tuple[list[str], int, int]) -> None:
    """Final norm, last position only, lm_head -> logits."""
    n = w.shape.layers
    norm = w.norm_weight(f"model.layers.{n}.final_norm_layernorm.weight", w.names.final_norm)
    q = f"/model/layers.{n}/final_norm_layernorm"
    w.sink.node("SkipSimplifiedLayerNormalization", [residual, hidden, norm],
                [f"{q}/output_0"], f"{q}/SkipLayerNorm", MS, epsilon=w.shape.rms_eps)
    x = f"{q}/output_0"
    if w.plan.prune_lm_head:
        last = w.node("Gather", [x, w.const(-1)], "/lm_head/prune/Gather", axis=1)[0]  # [B, H]
        x = w.node("Unsqueeze", [last, w.const([1])], "/lm_head/prune/Unsqueeze")[0]  # [B, 1, H]
    w.plan.lm_head.node(w.sink, x, "logits", "/lm_head", *head)
