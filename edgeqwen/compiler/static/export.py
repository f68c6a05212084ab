"""Checkpoint -> prefill and decode graphs (weights inline: NNAPI cannot read external data)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeqwen.compiler.checkpoint import Checkpoint
from edgeqwen.compiler.static.decoder import MASK_VALUE, Weights, decoder_graph
from edgeqwen.model.spec import ModelSpec
from edgeqwen.safetensors_io import CheckpointTensors

# Files of the two graphs, by role; the manifest's runtime section carries them to the runtime.
GRAPHS = {"prefill": "prefill.onnx", "decode": "decode.onnx"}
_PROTO_LIMIT = 2**31 - 1  # protobuf's message size limit: inline weights must stay under it


class LazyTensors(Mapping):
    """Checkpoint tensors by name, read from the shards (upcast to fp32) each time one is asked for
    and kept by nobody but the caller: a graph holds its own copy of each weight, so keeping a
    second copy of the whole model (as loading it in transformers did) doubled the build's memory."""

    def __init__(self, src: CheckpointTensors) -> None:
        self.src = src

    def __getitem__(self, name: str) -> np.ndarray:
        return self.src.rows(name)

    def __iter__(self):
        return iter(self.src.where)

    def __len__(self) -> int:
        return len(self.src.where)


def load_weights(ckpt: Checkpoint, cache: int, src: CheckpointTensors) -> tuple[Weights, ModelSpec]:
    from edgeqwen.compiler.passes.rope_caches import reference_tables

    cos, sin, _ = reference_tables(ckpt.spec, cache)  # [S, D/2] each
    full = lambda t: np.concatenate([t, t], axis=1).astype(np.float32)  # HF duplicates the half table
    return Weights(LazyTensors(src), ckpt.tensors, full(cos), full(sin)), ckpt.spec


def export(ckpt: Checkpoint, folder: Path, chunk: int, cache: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Write prefill.onnx (C = ``chunk``) and decode.onnx (C = 1) into ``folder``; return the runtime's
    description of them."""

    with CheckpointTensors(ckpt.path, list(ckpt.weight_files)) as src:
        return _export(ckpt, folder, chunk, cache, say, src)


def _export(ckpt: Checkpoint, folder: Path, chunk: int, cache: int, say: Callable[[str], None],
            src: CheckpointTensors) -> dict[str, Any]:
    import onnx

    weights, dims = load_weights(ckpt, cache, src)
    # a tied lm_head is the embedding table: stored once in the graph
    params = sum(int(np.prod(src.shape(k))) for k in src.where if not (weights.tied and k == weights.names.lm_head))
    if params * 4 > _PROTO_LIMIT:
        raise RuntimeError(f"{params / 1e6:.0f}M fp32 parameters do not fit one inline ONNX file (2 GB protobuf "
                           "limit); the static export takes models up to ~500M parameters")
    record: dict[str, Any] = {}
    for role, chunk_len in (("prefill", chunk), ("decode", 1)):
        model = decoder_graph(weights, dims, chunk_len, cache, f"qwen_{role}")
        path = folder / GRAPHS[role]
        onnx.save_model(model, str(path))
        record[role] = {"file": GRAPHS[role], "chunk": chunk_len, "nodes": len(model.graph.node)}
        say(f"    {role}: {GRAPHS[role]}, chunk {chunk_len}, cache {cache}, {len(model.graph.node)} nodes, "
            f"{path.stat().st_size / 1e6:.1f} MB")
        del model
    return {
        "graphs": record,
        "cache_length": cache,
        "layers": dims.layers,
        "kv_heads": dims.kv_heads,
        "head_dim": dims.head_dim,
        "vocab_size": dims.vocab,
        "mask_value": MASK_VALUE,
    }
