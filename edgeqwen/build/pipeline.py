"""checkpoint -> Olive passes -> our graph passes -> package -> validate -> manifest -> publish."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen.artifact import staged_folder, write_manifest
from edgeqwen.build import package
from edgeqwen.build.checkpoint import Checkpoint, open_checkpoint
from edgeqwen.build.progress import Progress
from edgeqwen.errors import ValidationFailed
from edgeqwen.targets import TargetProfile, load_profile


@dataclass
class BuildResult:
    folder: Path
    manifest: dict[str, Any]
    seconds: float


def build(model: str, target: str, out: Path | None = None, *, validate: bool = True, force: bool = False,
          revision: str | None = None, quiet: bool = False) -> BuildResult:
    t0 = time.perf_counter()
    profile = load_profile(target)
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
        if profile.backend == "static":
            manifest = _build_static(ckpt, profile, work, art, progress)
        else:
            with progress.step(f"Olive passes for {profile.name}: " + " -> ".join(p.type for p in profile.olive_passes)):
                from edgeqwen.build.olive import run_olive

                olive_out = run_olive(profile, ckpt.path, work, progress)
            with progress.step("Graph passes and packaging"):
                manifest = _package(olive_out, art, ckpt, profile, progress)
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


def _package(olive_out: Path, art: Path, ckpt: Checkpoint, profile: TargetProfile, progress: Progress) -> dict[str, Any]:
    import onnx

    from edgeqwen.build.graph_report import quantization_report
    from edgeqwen.build.passes import PassContext, get_pass

    genai_cfg = json.loads((olive_out / "genai_config.json").read_text())
    model = onnx.load(str(olive_out / package.MODEL_FILE))
    ctx = PassContext(tied_embeddings=ckpt.tied_embeddings, genai_config=genai_cfg,
                      checkpoint_config=ckpt.config, architecture=ckpt.architecture)
    applied = {}
    for name in profile.graph_passes:
        applied[name] = get_pass(name)(model, ctx)
        progress.say(f"    {name}: {applied[name]}")
    quant = quantization_report(model)
    package.save_graph(model, art)
    del model
    template = package.copy_side_files(olive_out, art, ckpt)
    cfg = package.write_genai_config(olive_out, art, profile.session_options)
    specials = package.special_tokens(art)
    runtime = package.runtime_section(cfg, ckpt, profile, template, specials, quant)
    steps = package.run_steps(art, runtime, profile, progress.say)
    return _manifest(ckpt, profile, quantization=quant, graph_passes=applied, package_steps=steps, runtime=runtime)


def _manifest(ckpt: Checkpoint, profile: TargetProfile, **sections: Any) -> dict[str, Any]:
    """The manifest of a build before validation and file hashes; ``sections`` are what the graphs hold."""
    from edgeqwen.build.versions import tool_versions

    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": ckpt.describe(),
        "profile": profile.to_dict(),
        **sections,
        "tools": tool_versions(),
        "build": {},
    }


def _build_static(ckpt: Checkpoint, profile: TargetProfile, work: Path, art: Path, progress: Progress) -> dict[str, Any]:
    from edgeqwen.build.static.build import export_graphs, package_static

    passes = " -> ".join(["static export"] + [p.type for p in profile.olive_passes])
    with progress.step(f"Static graphs for {profile.name}: {passes}"):
        spec = export_graphs(ckpt, profile, work, art, progress)
    with progress.step("Packaging"):
        sections = package_static(spec, art, ckpt, profile, progress)
    return _manifest(ckpt, profile, graph_passes={}, **sections)


def _validate(art: Path, manifest: dict[str, Any], ckpt: Checkpoint, profile: TargetProfile,
              progress: Progress) -> dict[str, Any]:
    from edgeqwen.runtime.engine import Engine
    from edgeqwen.validate import Reference, validate

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

