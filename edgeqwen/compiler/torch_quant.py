"""Olive's PyTorch weight quantisation passes (Gptq, Rtn, KQuant) on the checkpoint, before export.

A genai profile may list these before its ModelBuilder pass, as Olive's own recipes do (GPTQ, then the
builder). They save a checkpoint in Olive's quantised format: per linear layer ``qweight`` [N, K*bits/8]
uint8 (low bits first), ``scales`` [N, K/group] and, when asymmetric, ``qzeros`` [N, K/group*bits/8]:
MatMulNBits' own layout, so the streaming exporter repacks it without quantising again
(edgeqwen.compiler.export.prequantized).

Gptq runs layer by layer by default (edgeqwen.compiler.gptq: Olive's algorithm and packer on one decoder
layer at a time built from the checkpoint; with ``arithmetic = "olive"`` the same packed tensors as Olive's
pass on a float32 checkpoint), so its memory is one layer's, not the model's. ``implementation = "olive"`` in the step
runs Olive's own pass on the whole transformers model in memory instead, as Rtn and KQuant always do;
those whole-model passes are checked against this machine's memory before anything runs, and a model it
cannot hold is refused with the way out instead of running out of memory.

GPTQ's calibration text is local (the training split of edgeqwen.corpus: no network).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from edgeqwen.build_memory import WHOLE_MODEL_BASE, WHOLE_MODEL_BYTES_PER_PARAMETER, QuantiseStep, layer_dims, \
    available_memory, step_bytes, whole_model_bytes
from edgeqwen.compiler.olive_import import load_olive
from edgeqwen.errors import CheckpointError, ProfileError
from edgeqwen.profile_passes import OWN_OPTIONS, step_arithmetic, step_calibration, step_clip_search, step_implementation
from edgeqwen.model.spec import ModelSpec, read_spec
from edgeqwen.model.tensors import linear_shapes, tensor_map
from edgeqwen.targets import TORCH_PASSES, targets_dir

@dataclass(frozen=True)
class TorchQuantStep:
    type: str
    options: dict[str, Any]


def leading_torch_passes(passes: list) -> list[TorchQuantStep]:
    """The profile's passes before ModelBuilder that are Olive PyTorch quantisation passes."""
    out = []
    for p in passes:
        if p.type not in TORCH_PASSES:
            break
        out.append(TorchQuantStep(p.type, dict(p.options)))
    return out


def implementation(step: TorchQuantStep) -> str:
    """Who runs ``step``: "layerwise" (Gptq's default) or "olive"."""
    return step_implementation(step.type, step.options)


def calibration(step: TorchQuantStep) -> tuple[int, int]:
    """(samples, tokens) of the step's calibration windows."""
    return step_calibration(step.options)


def memory_needed(parameters: int, steps: list[TorchQuantStep] | None = None, spec: ModelSpec | None = None) -> int:
    """Peak bytes of the largest of ``steps`` (none given: an Olive pass on the whole model). A layer-wise
    Gptq step's peak is one layer's (edgeqwen.build_memory), modelled from ``spec``; without a spec it is
    not counted (it does not grow with the parameter count)."""
    need = 0
    for step in steps if steps is not None else [TorchQuantStep("Rtn", {})]:
        s = QuantiseStep(step.type, implementation(step), *calibration(step))
        if s.implementation == "olive" or spec is not None:
            need = max(need, step_bytes(s, layer_dims(spec) if spec is not None else None, parameters))
    return need


def check_memory(steps: list[TorchQuantStep], parameters: int, profile: str, available: int | None = None,
                 spec: ModelSpec | None = None) -> None:
    """Refuse, before loading anything, a model whose pass would not fit in this machine's memory: an
    Olive pass holding the whole model by its parameter count; a layer-wise Gptq step by its largest layer,
    its Hessians and the calibration states (counted when ``spec`` is given)."""
    if not steps:
        return
    have = available_memory() if available is None else available
    whole = [s for s in steps if implementation(s) == "olive"]
    if whole and whole_model_bytes(parameters) > have:
        need = whole_model_bytes(parameters)
        largest = max(0.0, (have - WHOLE_MODEL_BASE) / WHOLE_MODEL_BYTES_PER_PARAMETER)
        kinds = "/".join(s.type for s in whole)
        raise CheckpointError(
            f"profile {profile} runs Olive's {kinds} pass on the whole model in memory: {parameters / 1e9:.2f}B "
            f"parameters need about {need / 2**30:.1f} GiB, this machine has {have / 2**30:.1f} GiB available "
            f"(up to about {largest / 1e9:.1f}B parameters fit); build with a streaming profile such as "
            f"{streaming_twin(profile)}, or on a machine with more memory")
    layerwise = [s for s in steps if implementation(s) == "layerwise"]
    need = memory_needed(parameters, layerwise, spec) if layerwise else 0
    if need > have:
        samples, tokens = calibration(layerwise[0])
        raise CheckpointError(
            f"profile {profile} runs GPTQ layer by layer: one decoder layer of this model with its Hessians and "
            f"{samples} x {tokens} calibration tokens needs about {need / 2**30:.1f} GiB, this machine has "
            f"{have / 2**30:.1f} GiB available; lower calibration_samples in the profile, build with a streaming "
            f"profile such as {streaming_twin(profile)}, or on a machine with more memory")


def streaming_twin(profile: str) -> str:
    """The speed-first profile beside a quality-first one (``<name>-fast`` in targets/), which streams any size."""
    return f"{profile}-fast" if (targets_dir() / f"{profile}-fast.toml").is_file() else "cpu-int4-fast"


def calibration_rows(tokenizer, samples: int, tokens: int) -> list[list[int]]:
    """``samples`` windows of ``tokens`` ids from the local training text (never the held-out split)."""
    from edgeqwen.corpus import read_texts, split_corpus

    ids: list[int] = []
    for f in split_corpus()[0]:  # file by file: stop reading once there is enough text
        ids += tokenizer(read_texts([f]), add_special_tokens=False).input_ids
        if len(ids) >= samples * tokens:
            break
    rows = [ids[i * tokens:(i + 1) * tokens] for i in range(min(samples, len(ids) // tokens))]
    if not rows:
        raise CheckpointError(f"the local calibration text gave fewer than {tokens} tokens; lower "
                              f"calibration_tokens in the profile")
    return rows


_DATASET = "edgeqwen_local_text"
_registered: list[bool] = []


def _register_dataset() -> None:
    """An Olive dataset of token windows (stdlib text), so Olive's passes calibrate with no network."""
    from olive.data.registry import Registry

    if _registered:
        return
    _registered.append(True)

    @Registry.register_dataset(_DATASET)
    def local_text(model_path: str, samples: int, tokens: int):
        import torch
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_path)
        out = []
        for row in calibration_rows(tok, samples, tokens):
            x = torch.tensor(row)
            out.append(({"input_ids": x, "attention_mask": torch.ones_like(x)}, x))
        return out


def _data_config(model_path: Path, samples: int, tokens: int) -> dict[str, Any]:
    return {"name": "edgeqwen_calibration", "type": "DataContainer",
            "load_dataset_config": {"type": _DATASET,
                                    "params": {"model_path": str(model_path), "samples": samples, "tokens": tokens}},
            "pre_process_data_config": {"type": "skip_pre_process"},
            "dataloader_config": {"batch_size": 1}}


def group_overrides(spec: ModelSpec, group: int) -> dict[str, dict[str, int]]:
    """Olive's blockwise passes need K to be a multiple of the group: a layer whose K is not gets the largest
    power-of-two group (16 or more) that divides it, or one group per row (-1) when none does (MatMulNBits
    then holds the row in one block padded to a power of two). Keys: module paths as Olive names them (the
    transformers model's: Qwen3.5's model.language_model. prefix is model.)."""
    out = {}
    names = tensor_map(spec)
    for name, (_, k) in linear_shapes(spec).items():
        if k % group == 0:
            continue
        g = group
        while g > 16 and k % g:
            g //= 2
        out[names.parameter(name).removesuffix(".weight")] = {"group_size": g if k % g == 0 else -1}
    return out


def step_options(step: TorchQuantStep, checkpoint: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The options Olive's pass (or the layer-wise Gptq, which reads Olive's names) gets: ours removed, the
    group overrides of layers whose K the profile's group does not divide added."""
    opts = {k: v for k, v in step.options.items() if k not in OWN_OPTIONS}
    fixed = group_overrides(read_spec(checkpoint), int(opts.get("group_size", 128)))
    if fixed:
        opts["overrides"] = {**fixed, **(opts.get("overrides") or {})}
        say(f"    {len(fixed)} layers take a smaller group (their input size is not a multiple of the profile's)")
    return opts


def olive_pass(step_type: str, opts: dict[str, Any], src: Path, out: Path) -> Path:
    """Olive's own pass ``step_type`` with ``opts`` on the checkpoint ``src`` (the whole model in memory);
    the folder it saved."""
    load_olive()
    from olive.hardware.accelerator import DEFAULT_CPU_ACCELERATOR
    from olive.model import HfModelHandler
    from olive.passes.olive_pass import create_pass_from_dict
    from olive.passes.pytorch.gptq import Gptq
    from olive.passes.pytorch.kquant import KQuant
    from olive.passes.pytorch.rtn import Rtn

    classes = {"Gptq": Gptq, "Rtn": Rtn, "KQuant": KQuant}
    try:
        p = create_pass_from_dict(classes[step_type], opts, disable_search=True, accelerator_spec=DEFAULT_CPU_ACCELERATOR)
    except Exception as e:  # Olive's config validation: name the option
        raise ProfileError(f"Olive pass {step_type} refused its options {opts}: {str(e).splitlines()[0]}") from None
    return Path(p.run(HfModelHandler(model_path=str(src)), str(out)).model_path)


def layerwise_gptq(opts: dict[str, Any], src: Path, out: Path, rows: list[list[int]],
                   say: Callable[[str], None], arithmetic: str, clip_search: bool = False) -> Path:
    """GPTQ layer by layer (edgeqwen.compiler.gptq) with Olive's Gptq options ``opts`` on ``src``."""
    from edgeqwen.compiler.gptq import GptqOptions, quantize

    if quantization_config(src):
        raise ProfileError("Gptq quantises float weights; it cannot follow another quantisation pass")
    return quantize(src, out, replace(GptqOptions.parse(opts), arithmetic=arithmetic, clip_search=clip_search),
                    rows, say)


def local_calibration_rows(checkpoint: Path, samples: int, tokens: int) -> list[list[int]]:
    """The windows Olive's pass gets through the registered dataset (the same tokenizer, the same text)."""
    from transformers import AutoTokenizer

    return calibration_rows(AutoTokenizer.from_pretrained(str(checkpoint)), samples, tokens)


def run(steps: list[TorchQuantStep], checkpoint: Path, work: Path, say: Callable[[str], None]) -> Path:
    """Run the steps in order on ``checkpoint``; return the folder of the quantised checkpoint."""
    src = checkpoint
    for i, step in enumerate(steps):
        impl = implementation(step)
        opts = step_options(step, checkpoint, say)
        samples, tokens = calibration(step)
        out = work / f"torch_quant_{i}_{step.type.lower()}"
        t0 = time.perf_counter()
        if step.type == "Gptq":
            say(f"    {step.type}: calibrating on {samples} x {tokens} tokens of local text, layer by layer"
                + ("" if impl == "layerwise" else " (Olive's pass, the whole model in memory)"))
        if impl == "layerwise":
            src = layerwise_gptq(opts, src, out, local_calibration_rows(checkpoint, samples, tokens), say,
                                 step_arithmetic(step.type, step.options), step_clip_search(step.type, step.options))
        else:
            if step.type == "Gptq":
                _register_dataset()
                opts.setdefault("data_config", _data_config(checkpoint, samples, tokens))
            src = olive_pass(step.type, opts, src, out)
        say(f"    {step.type} done in {time.perf_counter() - t0:.0f} s")
    return src


def describe(step: TorchQuantStep) -> str:
    """Who did ``step``, for the build manifest's pass records."""
    if implementation(step) == "layerwise":
        arithmetic = step_arithmetic(step.type, step.options)
        how = {"olive": "Olive's GPTQ solver and packer",
               "fast-fp32": "Olive's GPTQ algorithm (transposed solve, symmetric Hessians, fp32) and packer",
               "fast": f"Olive's GPTQ algorithm (transposed solve, symmetric Hessians, calibration matmuls in "
                       f"{str(_matmul_dtype()).removeprefix('torch.')}) and packer"}[arithmetic]
        if step_clip_search(step.type, step.options):
            how += ", each group's scale searched for the least rounding error (clip_search)"
        return (f"edgeqwen.compiler.gptq ({arithmetic} arithmetic): {how}, one decoder layer at a time built from "
                "the checkpoint (not the model in memory); its packed weights are repacked into MatMulNBits, "
                "not quantised again")
    return (f"Olive's {step.type} pass on the transformers model (in memory, edgeqwen.compiler.torch_quant); "
            f"its packed weights are repacked into MatMulNBits, not quantised again")


def _matmul_dtype():
    from edgeqwen.compiler.gptq.precision import matmul_dtype

    return matmul_dtype()


def quantization_config(folder: Path) -> dict[str, Any]:
    """The Olive quantisation config saved with a quantised checkpoint ({} for a float one)."""
    cfg = json.loads((folder / "config.json").read_text())
    q = cfg.get("quantization_config") or {}
    return q if q.get("quant_method") == "olive" else {}
