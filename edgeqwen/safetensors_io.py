"""Safetensors read and written one tensor (or one block of rows) at a time.

Reads are plain reads, not memory maps: a map keeps every page it has touched resident (a 3 GB shard
read through safe_open left 3.6 GB of RSS), read() leaves the pages in the kernel's page cache, which
it reclaims, so RSS holds only what we keep. That is what bounds a build's memory by one tensor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeqwen.errors import CheckpointError

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}  # U8: the packed values of a quantised checkpoint


class TensorFile:
    """A safetensors file read one tensor at a time with plain reads, not a memory map: a map keeps
    every page it has touched resident (a 3 GB shard read through safe_open left 3.6 GB of RSS);
    read() leaves them in the page cache, which the kernel reclaims, and RSS holds one tensor."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")
        try:
            size = int.from_bytes(self.file.read(8), "little")
            if not 2 <= size <= path.stat().st_size - 8:
                raise ValueError(f"header length {size} does not fit the file")
            header = json.loads(self.file.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a table")
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            self.file.close()
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        self.metadata = header.pop("__metadata__", None)
        self.data_start = 8 + size
        self.entries: dict[str, dict[str, Any]] = header
        # (name, dtype code, shape) in the order the bytes lie in the file: reads go front to back
        self.layout = [(k, e["dtype"], list(e["shape"]))
                       for k, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def get(self, name: str):
        import torch

        e = self.entries[name]
        start, end = e["data_offsets"]
        buf = bytearray(end - start)
        self.file.seek(self.data_start + start)
        self.file.readinto(buf)
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[e["dtype"]]
        return torch.frombuffer(buf, dtype=dtype).reshape(e["shape"]) if buf else torch.empty(e["shape"], dtype=dtype)

    def rows(self, name: str, start: int = 0, stop: int | None = None, raw: bool = False) -> np.ndarray:
        """Rows [start, stop) of a tensor (all of a 1-D one) as fp32 numpy (``raw``: as stored, for packed
        integers): one contiguous read."""
        e = self.entries[name]
        shape = e["shape"]
        row = math.prod(shape[1:]) * SIZES[e["dtype"]]
        stop = shape[0] if stop is None else stop
        buf = bytearray((stop - start) * row)
        self.file.seek(self.data_start + e["data_offsets"][0] + start * row)
        if self.file.readinto(buf) != len(buf):
            raise CheckpointError(f"{self.file.name}: {name} is cut short")
        out_shape = (stop - start, *shape[1:])
        if raw:
            return np.frombuffer(buf, dtype=_NP[e["dtype"]]).reshape(out_shape)
        return to_fp32(np.frombuffer(buf, dtype=_NP[e["dtype"]]), e["dtype"]).reshape(out_shape)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def write_safetensors(path: Path, layout: list[tuple[str, str, list[int]]], tensor: Callable[[str], Any],
                      metadata: dict | None) -> None:
    """A safetensors file written one tensor at a time. ``layout``: (name, dtype code, shape) in file
    order, so the header is written first; ``tensor(name)`` gives each tensor when its bytes are due."""
    import torch

    codes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, code, shape in layout:
        n = math.prod(shape) * SIZES[code]
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data on 8 bytes
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, code, shape in layout:
            t = tensor(name).contiguous()
            if list(t.shape) != shape or codes.get(t.dtype) != code:
                raise ValueError(f"{name}: produced {t.dtype} {list(t.shape)}, the header says {code} {shape}")
            f.write(t.reshape(-1).view(torch.uint8).numpy())  # the tensor's own bytes, no copy
            del t


_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U8": np.uint8}


def to_fp32(raw: np.ndarray, code: str) -> np.ndarray:
    """Stored values -> fp32. bf16 is the top half of an fp32: widen the bit pattern, no rounding."""
    if code == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32) if code == "F16" else raw  # F32: the freshly read buffer itself


class CheckpointTensors:
    """Every tensor of a (possibly sharded) checkpoint by name, each shard opened once."""

    def __init__(self, folder: Path, weight_files: list[str]) -> None:
        self.files = [TensorFile(Path(folder) / f) for f in weight_files]
        self.where = {name: tf for tf in self.files for name in tf.entries}

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].shape(name)

    def rows(self, name: str, start: int = 0, stop: int | None = None, raw: bool = False) -> np.ndarray:
        return self.where[name].rows(name, start, stop, raw)

    def nbytes(self, name: str) -> int:
        """Stored bytes of a tensor (in its checkpoint dtype)."""
        e = self.where[name].entries[name]
        return math.prod(e["shape"]) * SIZES[e["dtype"]]

    def close(self) -> None:
        for tf in self.files:
            tf.file.close()

    def __enter__(self) -> CheckpointTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
