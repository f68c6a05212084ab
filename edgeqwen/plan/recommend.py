"""Catalogue x profiles -> the rows `edgeqwen plan` shows: what fits the device's memory and speed budget,
best first, and what does not, with the reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeqwen.build_memory import build_peak
from edgeqwen.errors import EdgeQwenError
from edgeqwen.model.spec import SpecError
from edgeqwen.plan.catalogue import CATALOGUE, Model, Shape
from edgeqwen.plan.model import (
    Calibration,
    Estimate,
    decode_features,
    estimate,
    prefill_features,
)
from edgeqwen.plan.storage import storage
from edgeqwen.profile_passes import linear_attention_refusal, quantise_steps
from edgeqwen.targets import TargetProfile, list_profiles, load_profile


@dataclass(frozen=True)
class Device:
    """Where the plan is for: which profiles apply, the memory budget, and how its speed compares with the
    calibration device (multipliers of decode and prefill time)."""
    name: str
    profile_device: str  # the profiles' ``device`` field that runs here: "cpu", "android", "gpu"
    ram_bytes: int
    decode_scale: float
    prefill_scale: float
    how: str  # how the scales were found, for --explain


@dataclass(frozen=True)
class Row:
    model: str
    hub_id: str
    profile: str
    precision: str
    parameters: int
    size_bytes: int
    memory_bytes: int
    decode_tokens_per_s: float | None
    prefill_tokens_per_s: float | None
    context: int
    fits: bool
    why_not: str  # "" when it fits
    build_bytes: int  # peak of `edgeqwen build --no-validate` (edgeqwen.build_memory); validation runs the artifact
    build_step: str  # the build step that sets it


def this_device(cal: Calibration, ram_bytes: int | None) -> Device:
    from edgeqwen.bench.device import device_facts
    from edgeqwen.plan.probe import probe

    facts, now = device_facts(), probe()
    ram = ram_bytes or int(facts["ram_gb"] * 2**30)
    dec = cal.probe["bandwidth_gb_s"] / now["bandwidth_gb_s"]
    pre = cal.probe["gemm_gflops"] / now["gemm_gflops"]
    return Device(f"this machine ({facts['cpu']}, {facts['usable_cores']} cores)", "cpu", ram, dec, pre,
                  f"probe here: {now['bandwidth_gb_s']:.1f} GB/s read, {now['gemm_gflops']:.0f} GFLOP/s; calibration "
                  f"device: {cal.probe['bandwidth_gb_s']:.1f} GB/s, {cal.probe['gemm_gflops']:.0f} GFLOP/s")


def report_device(cal: Calibration, path: Path, ram_bytes: int | None) -> Device:
    """A device described by an `edgeqwen bench` report measured on it: its decode and prefill figures
    against what the calibration predicts for that same artifact give the device's scales."""
    try:
        r = json.loads((path / "report.json" if path.is_dir() else path).read_text())
        art, speed = r["artifact"], r["speed"]
        config = art.get("config")
        profile = load_profile(art["profile"])
    except (OSError, ValueError, KeyError) as e:
        raise EdgeQwenError(f"{path}: not an `edgeqwen bench` report ({e}); run `edgeqwen bench ARTIFACT` on the "
                            f"device and pass its report.json") from None
    if not config:
        raise EdgeQwenError(f"{path}: the report does not carry the model's config (written by an older edgeqwen "
                            f"bench); bench the artifact again")
    try:
        shape = Shape.from_config(config)
    except SpecError as e:
        raise EdgeQwenError(f"{path}: {e}") from None
    s = storage(profile)
    depth, dec = min(((int(d), v["mean"]) for d, v in speed["decode_tokens_per_s"].items()))
    n, pre = min(((int(k), v["mean"]) for k, v in speed["prefill_tokens_per_s"].items()))
    t_dec = cal.predict("decode", decode_features(shape, s, depth))
    t_pre = cal.predict("prefill", prefill_features(shape, s, n))
    if t_dec is None or t_pre is None:
        raise EdgeQwenError(f"{path}: profile {profile.name} uses {s.kind} kernels, which the calibration does not "
                            f"cover; bench a {'/'.join(sorted(cal.kinds('decode')))} artifact on the device")
    ram = ram_bytes or int(r["device"].get("ram_gb", 0) * 2**30)
    return Device(f"{r['device'].get('cpu', 'device')} (report {path})", profile.device, ram, 1 / (dec * t_dec),
                  n / (pre * t_pre), f"report: {art['profile']} decodes {dec:.1f} tok/s at depth {depth}, prefills "
                                     f"{pre:.1f} tok/s at {n} tokens on the device")


def planned_profiles(device: Device, only: list[str] | None) -> list[TargetProfile]:
    if only:
        return [load_profile(t) for t in only]
    return [p for p in list_profiles() if p.backend == "genai" and p.device == device.profile_device]


def _row(cal: Calibration, m: Model, p: TargetProfile, device: Device, context: int, prompt: int,
         min_tps: float) -> Row:
    assert m.shape is not None
    s = storage(p)
    e: Estimate = estimate(cal, m.shape, s, m.context, min(context, m.context), prompt,
                           (device.decode_scale, device.prefill_scale))
    mem_hi = e.memory_bytes * (1 + cal.errors["memory"])
    why = []
    if context > m.context:
        why.append(f"context {m.context:,} < {context:,}")
    if mem_hi > device.ram_bytes:
        why.append(f"needs up to {_gb(mem_hi)} > {_gb(device.ram_bytes)}")
    if e.decode_tokens_per_s is not None and e.decode_tokens_per_s < min_tps:
        why.append(f"decode ~{e.decode_tokens_per_s:.1f} < {min_tps:g} tok/s")
    if m.shape.linear_layers and (refused := linear_attention_refusal(p)):
        why.append(f"{p.name} cannot build Gated DeltaNet layers: {refused}")
    built = build_peak(m.shape.layer_dims(), m.shape.parameters, quantise_steps(p))
    return Row(m.name, m.hub_id, p.name, p.precision, m.shape.parameters, e.size_bytes, int(e.memory_bytes),
               e.decode_tokens_per_s, e.prefill_tokens_per_s, min(context, m.context), not why, "; ".join(why),
               built.bytes, built.step)


def _gb(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def _rank(r: Row) -> tuple:
    """Best first: the largest model (quality grows with parameters faster than quantisation costs it, the
    usual finding for 4-bit and up), then more weight bits, then faster decode."""
    bits = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}.get(r.precision, 0)
    return (-r.parameters, -bits, -(r.decode_tokens_per_s or 0.0))


def plan(cal: Calibration, device: Device, context: int, task: str | None, min_tps: float,
         targets: list[str] | None = None, prompt: int = 512) -> dict[str, Any]:
    profiles = planned_profiles(device, targets)
    rows: list[Row] = []
    unbuildable = []
    for m in CATALOGUE:
        if task and task not in m.tasks:
            continue
        if m.shape is None:
            unbuildable.append({"model": m.name, "hub_id": m.hub_id, "why_not": m.why_not})
            continue
        rows += [_row(cal, m, p, device, context, prompt, min_tps) for p in profiles]
    fits = sorted((r for r in rows if r.fits), key=_rank)
    return {"schema": "edgeqwen.plan/1", "device": device.name, "ram_bytes": device.ram_bytes, "context": context,
            "task": task, "min_tokens_per_s": min_tps, "prompt_tokens": prompt,
            "errors": {q: round(v, 4) for q, v in cal.errors.items()}, "speed_scales": device.how,
            "fits": [asdict(r) for r in fits], "rejected": [asdict(r) for r in rows if not r.fits],
            "not_buildable": unbuildable}
