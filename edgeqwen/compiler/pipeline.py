"""One build: checkpoint -> the profile's build flow -> validation -> manifest -> publish.

The flow (edgeqwen.compiler.flows) is picked by the profile's backend; everything else here is the
same for every kind of artifact.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeqwen import allocator
from edgeqwen.artifact import staged_folder, write_manifest
from edgeqwen.compiler.adapter import (
    Adapter,
    check_against,
    open_adapter,
    tensor_shapes,
)
from edgeqwen.compiler.adapter import merge as merge_adapter
from edgeqwen.compiler.checkpoint import Checkpoint, check_complete, open_checkpoint
from edgeqwen.compiler.flows import FlowOutput, get_flow, known_flows
from edgeqwen.compiler.flows.genai import refuse_hybrid
from edgeqwen.compiler.torch_quant import leading_torch_passes
from edgeqwen.compiler.progress import Progress
from edgeqwen.errors import ProfileError, ValidationFailed
from edgeqwen.targets import QualityBounds, TargetProfile, load_profile


@dataclass
class BuildResult:
    folder: Path
    manifest: dict[str, Any]
    seconds: float


def check_profile(profile: TargetProfile) -> None:
    """The names a profile uses must exist in this compiler's registries (profile parsing itself stays
    a leaf that imports no compiler code)."""
    from edgeqwen.compiler.package_steps import known_steps
    from edgeqwen.compiler.passes import known_passes
    from edgeqwen.runtime.backends import known_backends

    where = f"profile {profile.source or profile.name}"
    backends = known_flows() & set(known_backends())  # a backend needs a build flow and a runtime backend
    if profile.backend not in backends:
        raise ProfileError(f"{where}: backend '{profile.backend}' is not one of {', '.join(sorted(backends))}")

    def unknown(kind: str, names, known) -> None:
        bad = [n for n in names if n not in known]
        if bad:
            raise ProfileError(f"{where}: unknown {kind} {', '.join(bad)}; known: {', '.join(sorted(known))}")

    unknown("graph pass(es)", profile.graph_passes, known_passes())
    unknown("package step(s)", profile.package_steps, known_steps())


def build(model: str, target: str, out: Path | None = None, *, validate: bool = True, force: bool = False,
          revision: str | None = None, quiet: bool = False, adapter: str | Path | None = None,
          adapter_scale: float = 1.0, exporter: str = "streaming", max_kl: float | None = None,
          wait: bool = False, loss_text: bool = True) -> BuildResult:
    """``adapter``: a peft LoRA adapter folder, merged into the weights before the build (and into the
    validation reference); ``adapter_scale`` multiplies its lora_alpha scaling. ``exporter``: how a
    genai graph is written, "streaming" (memory bounded by one tensor) or "olive" (Olive's passes).
    ``max_kl``: refuse the build if quantisation costs more than this KL (mean nats per token) against
    the fp32 checkpoint (the parity gate applies regardless). ``wait``: if another build is writing
    ``out``, start after it instead of refusing. ``loss_text`` False validates parity only (the
    quantisation loss on the built-in text is recorded as skipped)."""
    t0 = time.perf_counter()
    profile = load_profile(target)
    check_profile(profile)
    if validate and not loss_text and (max_kl is not None or profile.quality.max_kl_mean is not None):
        raise ProfileError("a KL bound (--max-kl or the profile's [quality]) needs the quantisation loss; "
                           "drop --no-loss-text or the bound")
    progress = Progress(3 + validate + (adapter is not None) + bool(leading_torch_passes(list(profile.olive_passes))),
                        quiet=quiet)
    with progress.step("Checking checkpoint"):
        ckpt = open_checkpoint(model, revision)
        check_complete(ckpt)
        progress.say(f"    {ckpt.architecture} ({ckpt.family}), {ckpt.parameter_count / 1e6:.1f}M parameters, "
                     f"{ckpt.dtype}, tied embeddings: {ckpt.tied_embeddings}")
        lora = _open_lora(adapter, adapter_scale, ckpt)
        refuse_hybrid(ckpt, profile, exporter)
    name = Path(ckpt.model_id).name + (f"+{lora.path.name}" if lora else "")
    out = Path(out) if out else Path(f"{name}-{profile.name}")
    with staged_folder(out, force=force, wait=wait) as stage:
        work, art = stage / "work", stage / "artifact"
        work.mkdir()
        art.mkdir()
        built_from = ckpt
        if lora is not None:
            with progress.step("Merging the LoRA adapter"):
                merged = merge_adapter(ckpt.path, list(ckpt.weight_files), lora, stage / "merged", progress.say)
                built_from = open_checkpoint(str(merged))
        flow = get_flow(profile.backend)(built_from, profile, work, art, progress, exporter=exporter)
        manifest = _manifest(ckpt, profile, flow)
        if lora is not None:
            manifest["adapter"] = lora.describe(adapter_scale)
        if flow.quantized_checkpoint is None:
            shutil.rmtree(work)  # Olive's cache and intermediate models: not part of the artifact
        if validate:
            # what the export and packaging freed goes back to the system before the artifact loads (the
            # Qwen3.5-0.8B shape's build process: 449 MB after packaging, 89 MB after this)
            allocator.release()
            with progress.step("Validating against the transformers reference"):
                quality = replace(profile.quality, max_kl_mean=max_kl) if max_kl is not None else profile.quality
                manifest["validation"] = _validate(art, manifest, built_from, profile, progress, quality,
                                                   flow.quantized_checkpoint, loss_text)
        else:
            manifest["validation"] = {"skipped": True}
        shutil.rmtree(work, ignore_errors=True)  # kept until here only for a quantised checkpoint to check against
        shutil.rmtree(stage / "merged", ignore_errors=True)  # the merged checkpoint was the build's input only
        manifest["build"]["seconds"] = round(time.perf_counter() - t0, 1)
        manifest["build"]["step_seconds"] = progress.timings
        manifest["build"]["peak_rss_mb_after_step"] = progress.peak_rss_mb
        manifest = write_manifest(art, manifest)
        for p in art.iterdir():
            os.replace(p, stage / p.name)
        art.rmdir()
        if validate and not manifest["validation"]["passed"]:
            rejected = out.with_name(out.name + ".rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            os.replace(stage, rejected)  # same folder: a rename, not a copy of the weights
            raise ValidationFailed(
                f"validation failed ({'; '.join(manifest['validation']['failures'])}); "
                f"the artifact was not published, it is kept for inspection in {rejected}"
            )
    return BuildResult(out.resolve(), manifest, time.perf_counter() - t0)


def _open_lora(adapter: str | Path | None, scale: float, ckpt: Checkpoint) -> Adapter | None:
    if adapter is None:
        return None
    lora = open_adapter(adapter, scale)
    check_against(lora, tensor_shapes(ckpt.path, list(ckpt.weight_files)), ckpt.model_id, ckpt.tensors)
    base = lora.config.get("base_model_name_or_path")
    if base and Path(str(base)).name != Path(ckpt.model_id).name:
        warnings.warn(f"the adapter names {base} as its base model and the checkpoint is {ckpt.model_id}; the "
                      f"shapes match, so it is merged", stacklevel=2)
    return lora


def _manifest(ckpt: Checkpoint, profile: TargetProfile, flow: FlowOutput) -> dict[str, Any]:
    """The manifest of a build before validation and file hashes."""
    from edgeqwen.compiler.versions import tool_versions

    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": ckpt.describe(),
        "profile": profile.to_dict(),
        "quantization": flow.quantization,
        "graph_passes": flow.graph_passes,
        "package_steps": flow.package_steps,
        "runtime": flow.runtime.to_dict(),
        "tools": tool_versions(),
        "build": {},
    }


def _validate(art: Path, manifest: dict[str, Any], ckpt: Checkpoint, profile: TargetProfile,
              progress: Progress, quality: QualityBounds, quantized: Path | None = None,
              loss_text: bool = True) -> dict[str, Any]:
    from edgeqwen.quality.validation import validate_apart
    from edgeqwen.runtime.engine import Engine

    # The engine only loads verified artifacts: give it a provisional manifest (the final one replaces it).
    write_manifest(art, {**manifest, "validation": {"pending": True}})

    def open_engine() -> Engine:
        with warnings.catch_warnings():  # a DirectML/NNAPI artifact runs on the CPU provider here: recorded
            warnings.simplefilter("ignore", RuntimeWarning)
            return Engine(art, verify="size")

    result = validate_apart(open_engine, ckpt.path, ckpt.parameter_count, profile.validation, log=progress.say,
                            quality=quality, quantized=quantized, loss_text=loss_text)
    verdict = "PASS" if result.passed else "FAIL: " + "; ".join(result.failures)
    progress.say(f"    verdict: {verdict}")
    loss = result.quantization_loss
    if loss and loss.warn and result.weights:
        worst = result.weights.worst_tensors
        warnings.warn(f"quantisation costs KL {loss.summary['kl_mean']:.3g} nats per token against fp32 (above "
                      f"{quality.warn_kl_mean}); most changed: " + ", ".join(
                          f"{t.tensor} ({t.relative_error:.1%})" for t in worst[:3]), stacklevel=2)
    return result.to_dict()
