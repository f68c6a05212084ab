"""The genai flow: a dynamic-KV graph for onnxruntime-genai, then the package steps.

Two exporters compute the profile's passes:
  streaming (default): edgeqwen.compiler.export writes the graph tensor by tensor and quantises each
      weight block with onnxruntime's kernel as it passes; memory does not grow with the model.
  olive: Olive runs the passes (ModelBuilder, then quantisation) and our graph passes fix up the
      result; it holds the whole model several times over (about 10 bytes per parameter), so it is
      for small models and for checking the streaming exporter against Olive.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeqwen.artifact import (
    BATCH,
    GENAI_KV_NAMES,
    LayerState,
    RuntimeSpec,
    StateTensor,
    VisualInput,
    kv_layer_states,
)
from edgeqwen.compiler import package
from edgeqwen.compiler.checkpoint import Checkpoint
from edgeqwen.compiler.flows import FlowOutput
from edgeqwen.compiler.progress import Progress
from edgeqwen.errors import CheckpointError, ProfileError
from edgeqwen.targets import TargetProfile

EXPORTERS = ("streaming", "olive")


def run(ckpt: Checkpoint, profile: TargetProfile, work: Path, art: Path, progress: Progress,
        exporter: str = "streaming") -> FlowOutput:
    if exporter not in EXPORTERS:
        raise ProfileError(f"unknown exporter '{exporter}'; one of {', '.join(EXPORTERS)}")
    head = ckpt.spec.head_dim
    if head % 16:  # Qwen's own models use 64 and 128; found by an odd test config failing at run time
        raise CheckpointError(f"head_dim {head} is not a multiple of 16, which onnxruntime's GroupQueryAttention "
                              f"(genai profiles) requires; edgeqwen cannot build this shape for {profile.name}")
    if exporter == "streaming":
        return _run_streaming(ckpt, profile, work, art, progress)
    from edgeqwen.compiler.torch_quant import leading_torch_passes

    if leading_torch_passes(list(profile.olive_passes)):
        raise ProfileError(f"profile {profile.name} calibrates Olive's PyTorch passes on local text, which only the "
                           f"streaming exporter feeds them; build without --exporter olive")
    from edgeqwen.compiler.olive import run_olive

    with progress.step(f"Olive passes for {profile.name}: " + " -> ".join(p.type for p in profile.olive_passes)):
        olive_out = run_olive(profile, ckpt.path, work, progress, layers=ckpt.spec.layers)
    with progress.step("Graph passes and packaging"):
        return _package(olive_out, art, ckpt, profile, progress)


def refuse_hybrid(ckpt: Checkpoint, profile: TargetProfile, exporter: str) -> None:
    """What a model with Gated DeltaNet layers (Qwen3.5) cannot be built to yet, refused in one line before
    any work (edgeqwen.profile_passes.linear_attention_refusal: the planner reads the same rule)."""
    from edgeqwen.profile_passes import LINEAR_ATTENTION_PROFILES, linear_attention_refusal

    spec = ckpt.spec
    if not spec.layers_of("linear_attention"):
        return
    what = f"{spec.architecture}'s Gated DeltaNet layers"
    if exporter != "streaming":
        raise ProfileError(f"{what} are written by the streaming exporter only (Olive's ModelBuilder is not used "
                           f"for them); build without --exporter olive")
    why = linear_attention_refusal(profile)
    if why:
        raise ProfileError(f"profile {profile.name} cannot build {what}: {why}; build {LINEAR_ATTENTION_PROFILES}")


def _run_streaming(ckpt: Checkpoint, profile: TargetProfile, work: Path, art: Path, progress: Progress) -> FlowOutput:
    import onnx

    from edgeqwen.compiler import torch_quant
    from edgeqwen.compiler.export.genai import write
    from edgeqwen.compiler.export.plan import GRAPH_PASSES_BUILT_IN, genai_plan
    from edgeqwen.compiler.graph_report import quantization_report

    plan, records = genai_plan(profile)
    torch_steps = torch_quant.leading_torch_passes(list(profile.olive_passes))
    weights_from = None
    if torch_steps:
        torch_quant.check_memory(torch_steps, ckpt.parameter_count, profile.name, spec=ckpt.spec)
        where = " -> ".join(f"{t.type} ({torch_quant.implementation(t)})" for t in torch_steps)
        with progress.step(f"PyTorch weight quantisation: {where}"):
            weights_from = torch_quant.run(torch_steps, ckpt.path, work, progress.say)
            plan, records = genai_plan(profile, torch_quant.quantization_config(weights_from), ckpt.tensors)
    steps = " -> ".join(p.type for p in profile.olive_passes)
    with progress.step(f"Streaming export for {profile.name} ({steps}, weight by weight)"):
        done = write(ckpt, plan, art, progress.say, weights_from=weights_from)
    with progress.step("Packaging"):
        quant = quantization_report(onnx.load(str(art / package.MODEL_FILE), load_external_data=False))
        quant["export"] = {"exporter": "streaming", "steps": records, **done}
        passes = {name: {"applied": True, "by": "streaming exporter", "summary": GRAPH_PASSES_BUILT_IN[name]}
                  for name in profile.graph_passes}
        out = _finish(ckpt.path, art, art, ckpt, profile, progress, quant, passes)
        return replace(out, quantized_checkpoint=weights_from)


def _package(olive_out: Path, art: Path, ckpt: Checkpoint, profile: TargetProfile, progress: Progress) -> FlowOutput:
    import onnx

    from edgeqwen.compiler.graph_report import quantization_report
    from edgeqwen.compiler.passes import PassContext, get_pass

    genai_cfg = json.loads((olive_out / "genai_config.json").read_text())
    model = onnx.load(str(olive_out / package.MODEL_FILE))
    ctx = PassContext(tied_embeddings=ckpt.spec.tied, genai_config=genai_cfg, spec=ckpt.spec)
    applied = {}
    for name in profile.graph_passes:
        applied[name] = get_pass(name)(model, ctx)
        progress.say(f"    {name}: {package.step_summary(applied[name])}")
    quant = quantization_report(model)
    package.save_graph(model, art)
    del model
    return _finish(olive_out, olive_out, art, ckpt, profile, progress, quant, applied)


def _finish(side_src: Path, cfg_src: Path, art: Path, ckpt: Checkpoint, profile: TargetProfile,
            progress: Progress, quant: dict[str, Any], passes: dict[str, Any]) -> FlowOutput:
    """Tokenizer and side files from ``side_src``, genai_config.json from ``cfg_src`` with the profile's
    session options, into the artifact; then the runtime contract and the profile's package steps."""
    template = package.copy_side_files(side_src, art, ckpt)
    cfg = package.write_genai_config(cfg_src, art, profile.session_options)
    runtime = runtime_spec(cfg, ckpt, profile, template, package.special_tokens(art), quant, art / package.MODEL_FILE)
    steps = package.run_steps(art, runtime, profile, progress.say)
    return FlowOutput(runtime=runtime, quantization=quant, package_steps=steps, graph_passes=passes)


def runtime_spec(cfg: dict[str, Any], ckpt: Checkpoint, profile: TargetProfile, template: str,
                 specials: dict[str, int], quant: dict[str, Any], graph: Path) -> RuntimeSpec:
    """The runtime contract of the genai graph ``graph`` whose genai_config.json is ``cfg``."""
    model = cfg["model"]
    eos = model["eos_token_id"]
    decoder = model["decoder"]
    past, present = GENAI_KV_NAMES
    # KV [batch, kv_heads, sequence, head_dim] per layer, in the graph's io dtype (fp16 on DirectML, and
    # wherever the builder picks it): read from the graph, the one place it is certain
    first_kv = ckpt.spec.layers_of("full_attention")[0]
    dtype = _input_dtype(graph, past.format(i=first_kv, kind="key"))
    layers = kv_layer_states(int(decoder["num_hidden_layers"]), int(decoder["num_key_value_heads"]),
                             int(decoder["head_size"]), dtype, past, present)
    common = package.common_runtime(ckpt, profile, template, specials)
    if ckpt.spec.layers_of("linear_attention"):
        layers = _hybrid_layers(ckpt, layers, dtype)
        # onnxruntime-genai does not run this graph's fixed states: edgeqwen's own backend on onnxruntime does
        common["backend"] = "batched"
    if ckpt.spec.rope.sections:  # the graph takes mRoPE's three position axes (edgeqwen.compiler.export.hybrid)
        common["positions"] = "mrope"
    if ckpt.spec.vision_tokens:
        from edgeqwen.compiler.export import hybrid

        common["visual_input"] = VisualInput(hybrid.VISUAL_EMBEDS, ckpt.spec.hidden, dtype, ckpt.spec.vision_tokens)
    return RuntimeSpec(
        **common,
        model_file=package.MODEL_FILE,
        genai_config="genai_config.json",
        context_length=int(model["context_length"]),
        vocab_size=int(model["vocab_size"]),
        eos_token_ids=eos if isinstance(eos, list) else [eos],
        logits="last_position" if quant["lm_head_last_position_only"] else "all_positions",
        layers=layers,
    )


def _hybrid_layers(ckpt: Checkpoint, kv: tuple[LayerState, ...], dtype: str) -> tuple[LayerState, ...]:
    """Qwen3.5's layers: the KV layers' descriptors where a layer is full attention, else its fixed state
    (conv window [batch, kernel - 1, conv_dim], recurrent state [batch, v_heads, k_dim, v_dim])."""
    from edgeqwen.compiler.export import hybrid

    spec, out = ckpt.spec, []
    shapes = {"conv": hybrid.conv_state_shape(spec), "recurrent": hybrid.recurrent_state_shape(spec)}
    for i, kind in enumerate(spec.layer_kinds):
        if kind.mixer != "linear_attention":
            out.append(kv[i])
            continue
        out.append(LayerState("fixed", tuple(StateTensor(past, now, (BATCH, *shapes[role]), dtype)
                                             for role, (past, now) in hybrid.state_names(i).items())))
    return tuple(out)


def _input_dtype(graph: Path, name: str) -> str:
    """The element type of the graph input ``name`` as the runtime contract spells it (no weights read)."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(graph), load_external_data=False)
    kinds = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
    if kinds.get(name) not in names:
        got = TensorProto.DataType.Name(kinds[name]) if name in kinds else "no such input"
        raise ProfileError(f"{graph.name}: KV input {name} is {got}; the runtime contract takes float32 or float16 KV")
    return names[kinds[name]]
