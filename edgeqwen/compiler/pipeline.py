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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen.artifact import staged_folder, write_manifest
from edgeqwen.compiler.checkpoint import Checkpoint, open_checkpoint
from edgeqwen.compiler.flows import FlowOutput, get_flow, known_flows
from edgeqwen.compiler.progress import Progress
from edgeqwen.errors import ProfileError, ValidationFailed
from edgeqwen.targets import TargetProfile, load_profile


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
          revision: str | None = None, quiet: bool = False) -> BuildResult:
    t0 = time.perf_counter()
    profile = load_profile(target)
    check_profile(profile)
    progress = Progress(4 if validate else 3, quiet=quiet)
    with progress.step("Checking checkpoint"):
        ckpt = open_checkpoint(model, revision)
        progress.say(f"    {ckpt.architecture} ({ckpt.family}), {ckpt.parameter_count / 1e6:.1f}M parameters, "
                     f"{ckpt.dtype}, tied embeddings: {ckpt.tied_embeddings}")
    out = Path(out) if out else Path(f"{Path(ckpt.model_id).name}-{profile.name}")
    with staged_folder(out, force=force) as stage:
        work, art = stage / "work", stage / "artifact"
        work.mkdir()
        art.mkdir()
        flow = get_flow(profile.backend)(ckpt, profile, work, art, progress)
        manifest = _manifest(ckpt, profile, flow)
        shutil.rmtree(work)  # Olive's cache and intermediate models: not part of the artifact
        if validate:
            with progress.step("Validating against the transformers reference"):
                manifest["validation"] = _validate(art, manifest, ckpt, profile, progress)
        else:
            manifest["validation"] = {"skipped": True}
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
              progress: Progress) -> dict[str, Any]:
    from edgeqwen.quality.reference import Reference
    from edgeqwen.quality.validation import validate
    from edgeqwen.runtime.engine import Engine

    # The engine only loads verified artifacts: give it a provisional manifest (the final one replaces it).
    write_manifest(art, {**manifest, "validation": {"pending": True}})
    with warnings.catch_warnings():  # a DirectML/NNAPI artifact runs on the CPU provider here: recorded below
        warnings.simplefilter("ignore", RuntimeWarning)
        engine = Engine(art, verify="size")
    reference = Reference(ckpt.path)
    result = validate(engine, reference, profile.validation, log=progress.say)
    result["execution_provider"] = engine.provider
    verdict = "PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"])
    progress.say(f"    verdict: {verdict}")
    return result
