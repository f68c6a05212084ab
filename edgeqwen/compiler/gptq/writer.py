"""The quantised checkpoint, written shard by shard as the layers are done, in Olive's layout.

What Olive's Gptq leaves (save_pretrained of the model with QuantLinear modules, then save_metadata):
safetensors holding each decoder linear layer as X.qweight / X.scales / X.qzeros and every other tensor
(embedding, norms, biases, an untied lm_head) as it was; config.json with quantization_config
(quant_method "olive"); the generation and tokenizer files. Here: shard 1 the embedding table, shard
2 + i decoder layer i, the last one the final norm (and an untied lm_head), with the usual index; float
tensors are copied as stored (bytes, in row blocks: no table is ever whole in memory); the side files are
copied from the source checkpoint as they are (Olive re-saves them through transformers).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeqwen.safetensors_io import SIZES, CheckpointTensors

ROWS_PER_COPY = 8192  # float tensors copied this many rows at a time (a 151936 x 4096 bf16 table: 64 MB)
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")
INDEX = "model.safetensors.index.json"
_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "U8"}


@dataclass(frozen=True)
class ShardTensor:
    """One tensor of a shard: its header entry and its bytes, produced block by block when due."""

    name: str
    dtype: str  # safetensors code: F32, F16, BF16, U8
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[bytes | memoryview | np.ndarray]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SIZES[self.dtype]


def from_torch(name: str, t: torch.Tensor) -> ShardTensor:
    """A tensor computed here (packed weights, scales): its own bytes."""
    t = t.detach().contiguous()
    return ShardTensor(name, _CODES[t.dtype], tuple(t.shape), lambda: iter([t.reshape(-1).view(torch.uint8).numpy()]))


def copied(src: CheckpointTensors, name: str) -> ShardTensor:
    """A checkpoint tensor as stored (dtype and bytes unchanged), read ROWS_PER_COPY rows at a time."""
    shape = src.shape(name)
    code = src.where[name].entries[name]["dtype"]

    def blocks() -> Iterator[np.ndarray]:
        rows = shape[0] if shape else 1
        for r in range(0, rows, ROWS_PER_COPY):
            yield src.rows(name, r, min(rows, r + ROWS_PER_COPY), raw=True)

    return ShardTensor(name, code, shape, blocks)


def write_shard(path: Path, tensors: list[ShardTensor]) -> None:
    """A safetensors file: the header first (sizes are known), then each tensor's blocks in order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data on 8 bytes
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors:
            written = sum(f.write(memoryview(np.ascontiguousarray(b)).cast("B")) for b in t.blocks())
            if written != t.nbytes:
                raise RuntimeError(f"{t.name}: wrote {written} bytes, the header says {t.nbytes}")


@dataclass
class ShardedCheckpoint:
    """The output folder, shard by shard: ``shards`` files named as save_pretrained names them."""

    folder: Path
    shards: int
    written: int = 0
    total_bytes: int = 0

    def __post_init__(self) -> None:
        self.weight_map: dict[str, str] = {}
        if self.folder.exists():  # a previous attempt's partial output
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)

    def add(self, tensors: list[ShardTensor]) -> None:
        self.written += 1
        name = f"model-{self.written:05d}-of-{self.shards:05d}.safetensors"
        write_shard(self.folder / name, tensors)
        self.weight_map.update({t.name: name for t in tensors})
        self.total_bytes += sum(t.nbytes for t in tensors)

    def finish(self, source: Path, config: dict[str, Any]) -> Path:
        """The index, config.json and the source's side files; the folder."""
        if self.written != self.shards:
            raise RuntimeError(f"wrote {self.written} of {self.shards} shards")
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (self.folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, self.folder / name)
        return self.folder
