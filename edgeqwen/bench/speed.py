"""A llama-bench-like matrix: prefill at several prompt lengths, decode at several KV depths,
time to first token, load time; each point repeated, mean and standard deviation reported."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

FILLER = ("The history of the lighthouse is a story of fire, glass and patience. Keepers tended open flames on "
          "towers along dangerous coasts, and ships steered by them through the night. ")


@dataclass(frozen=True)
class SpeedPlan:
    prompt_lengths: tuple[int, ...] = (128, 512, 2048)
    depths: tuple[int, ...] = (0, 512, 2048)
    decode_tokens: int = 64
    reps: int = 3


def filler_ids(engine, n: int) -> list[int]:
    ids: list[int] = []
    piece = engine.encode(FILLER)
    while len(ids) < n:
        ids.extend(piece)
    return ids[:n]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "runs": list(values)}


def measure_load(folder: Path, threads: int | None, reps: int) -> dict[str, Any]:
    from edgeqwen.runtime import load

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine = load(folder, threads=threads)
        times.append(time.perf_counter() - t0)
        del engine
    return _stats(times)


def measure_prefill(engine, length: int) -> tuple[float, float]:
    """(tokens/s, time to first token in s) for one prompt of ``length`` tokens."""
    state = engine.backend.new_state(length + 2)
    ids = filler_ids(engine, length)
    t0 = time.perf_counter()
    logits = state.append(ids)
    int(np.argmax(logits))  # the first token: what a user waits for
    ttft = time.perf_counter() - t0
    return length / ttft, ttft


def measure_decode(engine, depth: int, n: int) -> float:
    """tokens/s of ``n`` greedy decode steps after ``depth`` tokens already in the KV cache."""
    prompt = filler_ids(engine, max(depth, 1))
    state = engine.backend.new_state(len(prompt) + n + 2)
    logits = state.append(prompt)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = state.append([int(np.argmax(logits))])
    return n / (time.perf_counter() - t0)


def _prefill_positions(n: int) -> int:
    return n + 2  # the prompt, the first token, one spare


def _decode_positions(depth: int, plan: SpeedPlan) -> int:
    return depth + plan.decode_tokens + 2


def run_matrix(engine, plan: SpeedPlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    ctx = engine.context_length
    lengths = [n for n in plan.prompt_lengths if _prefill_positions(n) <= ctx]
    depths = [d for d in plan.depths if _decode_positions(d, plan) <= ctx]
    skipped = sorted(set(plan.prompt_lengths) - set(lengths)) + sorted(set(plan.depths) - set(depths))
    # Why points of the plan are not measured: they need more than the artifact's context length.
    why = [f"skipped prefill at {n} tokens: needs {_prefill_positions(n)} positions, the artifact's context "
           f"length is {ctx}" for n in plan.prompt_lengths if n not in lengths]
    why += [f"skipped decode at KV depth {d}: needs {_decode_positions(d, plan)} positions ({plan.decode_tokens} "
            f"decoded tokens), the artifact's context length is {ctx}" for d in plan.depths if d not in depths]
    for line in why:
        log(f"    {line}")
    total = (len(lengths) + len(depths)) * plan.reps
    done = 0
    measure_prefill(engine, min(lengths or [16]))  # warm-up: kernel selection, first allocations
    prefill, ttft, decode = {}, {}, {}
    for n in lengths:
        runs = []
        for _ in range(plan.reps):
            runs.append(measure_prefill(engine, n))
            done += 1
            log(f"    [{done}/{total}] prefill {n:5d} tokens: {runs[-1][0]:8.1f} tok/s")
        prefill[str(n)] = _stats([r[0] for r in runs])
        ttft[str(n)] = _stats([r[1] for r in runs])
    for d in depths:
        runs = []
        for _ in range(plan.reps):
            runs.append(measure_decode(engine, d, plan.decode_tokens))
            done += 1
            log(f"    [{done}/{total}] decode {plan.decode_tokens} at depth {d:5d}: {runs[-1]:7.1f} tok/s")
        decode[str(d)] = _stats(runs)
    return {"prefill_tokens_per_s": prefill, "ttft_s": ttft, "decode_tokens_per_s": decode,
            "decode_tokens": plan.decode_tokens, "reps": plan.reps, "skipped_beyond_context": skipped,
            "skipped": why, "context_length": ctx}
