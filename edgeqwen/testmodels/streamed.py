"""Large fixture checkpoints written tensor by tensor, shard by shard, in bf16 (numpy only).

A 7B-shaped checkpoint is 15 GB in bf16; holding it in memory (as ``fixtures.make_checkpoint`` does
with a transformers model) would need 30 GB in fp32. Here every tensor is generated from its own
seed in row blocks and written straight into its place in a safetensors shard, so memory stays
at one block (16 MB of fp32 and its temporaries) whatever the model size. Values follow the same
rules as the in-memory fixtures (``fixtures.scaled``), so greedy output is not one repeated token.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeqwen.model.tensors import checkpoint_layout, mtp_layout
from edgeqwen.testmodels.fixtures import scaled, weight_kind

BLOCK_VALUES = 4 * 2**20  # values generated at a time: 16 MB of fp32
DEFAULT_SHARD_BYTES = 4 * 2**30  # Qwen's own shards are about 4 GB


def tensor_table(spec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a checkpoint of the fixture ``spec``'s shape, in file order (the
    tensor map's: edgeqwen.model.tensors), then Qwen3.5's multi-token-prediction tensors as published
    checkpoints carry them (llama.cpp's converter and loader expect them: a Qwen3.5 GGUF without its mtp layer
    does not load)."""
    ms = spec.model_spec
    return checkpoint_layout(ms) + (mtp_layout(ms) if ms.mtp_layers and spec.mtp else [])


def to_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), rounding to nearest even like torch."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits >> 16) & 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    return rounded.astype(np.uint16)


def blocks(spec, index: int, name: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """The tensor's values as bf16 bits, row block by row block (each block from its own seed)."""
    kind = weight_kind(name, spec.model_spec.norm_offset)
    n = int(np.prod(shape))
    width = shape[-1]
    rows_per_block = max(1, BLOCK_VALUES // width)
    for b, start in enumerate(range(0, n // width, rows_per_block)):
        rows = min(rows_per_block, n // width - start)
        rng = np.random.default_rng([spec.seed, index, b])
        x = rng.standard_normal((rows, width), dtype=np.float32)
        yield to_bf16(scaled(x, kind, spec, fan_in=width))  # width = fan_in of an [out, in] weight


def plan_shards(table, shard_bytes: int) -> list[list[int]]:
    """Tensor indices per shard, in order; a shard closes once it would pass ``shard_bytes``."""
    shards, current, size = [], [], 0
    for i, (_, shape) in enumerate(table):
        nbytes = int(np.prod(shape)) * 2
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    shards.append(current)
    return shards


def write_weights(spec, out: Path, shard_bytes: int = DEFAULT_SHARD_BYTES,
                  log: Callable[[str], None] = lambda s: None) -> int:
    """Write the safetensors shards (and their index when there are several); return total bytes."""
    table = tensor_table(spec)
    shards = plan_shards(table, shard_bytes)
    total = sum(int(np.prod(s)) * 2 for _, s in table)
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))] \
        if len(shards) > 1 else ["model.safetensors"]
    t0, written, weight_map = time.perf_counter(), 0, {}
    for file, members in zip(names, shards):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for i in members:
            name, shape = table[i]
            nbytes = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        with open(out / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for i in members:
                name, shape = table[i]
                for block in blocks(spec, i, name, shape):
                    f.write(block.tobytes())
                written += int(np.prod(shape)) * 2
                elapsed = time.perf_counter() - t0
                log(f"    {i + 1}/{len(table)} tensors, {written / 2**30:.2f} of {total / 2**30:.2f} GiB written, "
                    f"{elapsed:.0f} s elapsed, ~{elapsed / written * (total - written):.0f} s left")
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total
