"""The static flow: export the two static-shape graphs, run the profile's Olive passes on each
(quantisation), then add tokenizer, chat template and the runtime contract."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from edgeqwen.artifact import RuntimeSpec, StaticSpec
from edgeqwen.compiler import package
from edgeqwen.compiler.checkpoint import Checkpoint, generation_token_ids
from edgeqwen.compiler.flows import FlowOutput
from edgeqwen.compiler.progress import Progress
from edgeqwen.targets import TargetProfile


def run(ckpt: Checkpoint, profile: TargetProfile, work: Path, art: Path, progress: Progress,
        exporter: str = "streaming") -> FlowOutput:
    # ``exporter`` concerns genai graphs; static graphs have one exporter (edgeqwen.compiler.static)
    passes = " -> ".join(["static export"] + [p.type for p in profile.olive_passes])
    with progress.step(f"Static graphs for {profile.name}: {passes}"):
        spec = export_graphs(ckpt, profile, work, art, progress)
    with progress.step("Packaging"):
        return package_static(spec, art, ckpt, profile, progress)


def export_graphs(ckpt: Checkpoint, profile: TargetProfile, work: Path, art: Path, progress: Progress) -> dict[str, Any]:
    from edgeqwen.compiler.static.export import export

    shapes = profile.static_shapes
    spec = export(ckpt, work, shapes.prefill_chunk, shapes.cache_length, say=progress.say)
    feeds = {}
    if profile.olive_passes:
        from edgeqwen.compiler.static.calibration import record

        feeds = record(work, spec, ckpt.path / "tokenizer.json", work)
        progress.say("    calibration: fp32 graphs run over CPython stdlib text (training split), feeds recorded")
    for role, graph in spec["graphs"].items():
        src = work / graph["file"]
        if profile.olive_passes:
            src = _olive(profile, src, work / f"olive_{role}", progress, feeds[role])
        shutil.move(str(src), art / graph["file"])
    return spec


def _olive(profile: TargetProfile, src: Path, work: Path, progress: Progress, feeds: Path) -> Path:
    """Olive's passes on one graph, then saved again with weights inline (NNAPI reads no external data)."""
    import onnx

    from edgeqwen.compiler.olive import run_olive_on_onnx

    out = run_olive_on_onnx(profile, src, work, progress, calibration=feeds)
    model = onnx.load(str(out))
    inline = work / src.name
    onnx.save_model(model, str(inline))
    progress.say(f"    {src.stem}: {' -> '.join(p.type for p in profile.olive_passes)}, "
                 f"{inline.stat().st_size / 1e6:.1f} MB")
    return inline


def package_static(spec: dict[str, Any], art: Path, ckpt: Checkpoint, profile: TargetProfile,
                   progress: Progress) -> FlowOutput:
    """Side files, manifest sections and package steps; mirrors the genai flow's packaging."""
    import onnx

    graphs = {}
    for role, graph in spec["graphs"].items():
        model = onnx.load(str(art / graph["file"]))
        graphs[role] = graph_record(model)
        del model
    template = package.copy_side_files(ckpt.path, art, ckpt)
    specials = package.special_tokens(art)
    runtime = runtime_spec(spec, ckpt, profile, template, specials)
    steps = package.run_steps(art, runtime, profile, progress.say)
    return FlowOutput(runtime=runtime, quantization={"precision": profile.precision, "graphs": graphs},
                      package_steps=steps)


def graph_record(model) -> dict[str, Any]:
    """What a static graph really holds: node counts by op, initializer bytes by dtype, input shapes."""
    from onnx import helper

    from edgeqwen.compiler.graph_report import _nbytes

    by_type: Counter = Counter()
    for t in model.graph.initializer:
        by_type[helper.tensor_dtype_to_np_dtype(t.data_type).name] += _nbytes(t)
    return {
        "nodes": len(model.graph.node),
        "op_counts": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "initializer_bytes": dict(by_type),
        "inputs": {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input[:3]},
    }


def runtime_spec(spec: dict[str, Any], ckpt: Checkpoint, profile: TargetProfile, template: str,
                 specials: dict[str, int]) -> RuntimeSpec:
    static = StaticSpec.from_dict(spec)
    return RuntimeSpec(
        **package.common_runtime(ckpt, profile, template, specials),
        context_length=static.cache_length,
        vocab_size=static.vocab_size,
        eos_token_ids=sorted(set(generation_token_ids(ckpt)[1])),
        logits="last_position",
        layers=static.layer_states(),  # KV [kv_heads, cache_length, head_dim] float32 per layer, no batch axis
        static=static,
    )
