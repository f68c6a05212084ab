"""The matmul precision of the fast arithmetic's calibration forwards.

The layer's linear layers are most of GPTQ's forward work (an 8B layer: 2 x 6.3 TFLOP for 32 x 512 tokens, the
float pass and the fake-quantised one). On a CPU with bfloat16 dot products (AVX512_BF16, AMX) a bf16 matmul
runs 2.7x the fp32 one here (AMD EPYC, 512 x 4096 x 12288: 214-223 vs 78-80 GFLOP/s with a build beside it),
as GPU GPTQ runs its forwards in half precision. Only the linear layers change: inputs and weights rounded to
bf16, products summed in fp32, the output widened back to fp32, the bias added in fp32; norms, attention,
the delta rule and the residual stream stay fp32, and the Hessians are accumulated in fp32 from what the
layers receive. Elsewhere (AVX2-only CPUs, where bf16 would be emulated and slower) everything stays fp32.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 dot products natively (Linux x86 flags; Apple silicon M2 and later
    and other arm64 with BF16 report it in /proc/cpuinfo as bf16 on Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    words = set(flags.split())
    return any(f in words for f in BF16_FLAGS) or (platform.machine() in ("aarch64", "arm64") and "bf16" in words)


def matmul_dtype() -> torch.dtype:
    """The dtype the fast arithmetic's linear layers multiply in on this machine."""
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def _forward(linear: torch.nn.Linear, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    y = torch.nn.functional.linear(x.to(weight.dtype), weight).to(x.dtype)  # [.., N]
    return y + linear.bias if linear.bias is not None else y


@contextlib.contextmanager
def linears_in(layer: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, every nn.Linear of ``layer`` multiplies in ``dtype`` (a copy of its current weight;
    hooks still see the fp32 input). fp32: nothing changes."""
    if dtype == torch.float32:
        yield
        return
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        m.forward = functools.partial(_forward, m, m.weight.detach().to(dtype))
    try:
        yield
    finally:
        for m in linears:
            del m.forward  # back to the class's forward; the copy is freed
