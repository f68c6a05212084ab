"""The graph's external data file, written piece by piece at known offsets.

A tensor's region is reserved first (its size is known from its shape), then filled by as many
``write`` calls as its producer needs, in any order: a quantised weight fills its packed blocks,
scales and zero points from one pass over the source rows; a transposed weight fills column strips.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ALIGN = 64  # every tensor starts on a 64-byte boundary: memory-mapped weights stay aligned for SIMD loads
INLINE_BYTES = 4096  # smaller tensors (norm weights, shapes) live in the graph proto itself


class Region:
    """A reserved range of the data file holding one tensor."""

    def __init__(self, fd: int, offset: int, nbytes: int) -> None:
        self.fd, self.offset, self.nbytes = fd, offset, nbytes

    def write(self, at: int, data: np.ndarray) -> None:
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        if at < 0 or at + len(buf) > self.nbytes:
            raise ValueError(f"write of {len(buf)} bytes at {at} overruns a {self.nbytes}-byte tensor")
        done = 0
        while done < len(buf):
            done += os.pwrite(self.fd, buf[done:], self.offset + at + done)


class DataFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        self.size = 0

    def reserve(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[onnx.TensorProto, Region]:
        """An external-data initializer of ``shape`` and the region its bytes must be written into."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        offset = -(-self.size // ALIGN) * ALIGN
        self.size = offset + nbytes
        os.ftruncate(self.fd, self.size)  # sparse until written; the file is never shorter than promised
        t = onnx.TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        t.dims.extend(shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t, Region(self.fd, offset, nbytes)

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """A whole small-or-medium tensor at once: inline when tiny, else external."""
        if array.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(np.ascontiguousarray(array), name)
        t, region = self.reserve(name, array.dtype, array.shape)
        region.write(0, array)
        return t

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
