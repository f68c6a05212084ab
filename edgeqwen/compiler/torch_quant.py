"""Olive's PyTorch weight quantisation passes (Gptq, Rtn, KQuant) on the checkpoint, before export.

A genai profile may list these before its ModelBuilder pass, as Olive's own recipes do (GPTQ, then the
builder). Olive runs them on the transformers model in memory and saves a checkpoint in its own quantised
format: per linear layer ``qweight`` [N, K*bits/8] uint8 (low bits first), ``scales`` [N, K/group] and, when
asymmetric, ``qzeros`` [N, K/group*bits/8]: MatMulNBits' own layout, so the streaming exporter repacks it
without quantising again (edgeqwen.compiler.export.prequantized).

GPTQ needs calibration text and the whole model in memory. The text is local (the training split of
edgeqwen.corpus: no network); the memory is checked before anything runs, and a model this machine cannot
hold is refused with the way out instead of running out of memory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeqwen.errors import CheckpointError, ProfileError
from edgeqwen.model.spec import ModelSpec, read_spec
from edgeqwen.model.tensors import ATTENTION_LINEARS, MLP_LINEARS, tensor_map
from edgeqwen.targets import TORCH_PASSES, targets_dir

# Our own options on these passes (Olive's are passed through unchanged).
CALIBRATION_OPTIONS = {"calibration_samples": 32, "calibration_tokens": 512}
# Peak resident bytes per parameter while Olive's GPTQ runs: the model loaded as fp32 (4), the fake-quantised
# copy of each layer, the packed result and save_pretrained's buffers. Measured on the Qwen2.5-0.5B shape
# (fp32 checkpoint, 494M parameters): 4.87 GB peak RSS (/usr/bin/time -v) = 1.5 GiB base + 6.6 bytes per
# parameter; 8 leaves a margin for larger hidden sizes (bigger Hessians and calibration activations).
BYTES_PER_PARAMETER = 8.0
BASE_BYTES = 1.5 * 2**30  # torch, transformers, Olive and the tokenizer, loaded


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


def memory_needed(parameters: int) -> int:
    return int(parameters * BYTES_PER_PARAMETER + BASE_BYTES)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (the kernel's estimate of what can be used without swapping)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(steps: list[TorchQuantStep], parameters: int, profile: str, available: int | None = None) -> None:
    """Refuse, before loading anything, a model whose in-memory pass would not fit in this machine's memory."""
    if not steps:
        return
    need, have = memory_needed(parameters), available_memory() if available is None else available
    if need > have:
        largest = max(0.0, (have - BASE_BYTES) / BYTES_PER_PARAMETER)
        kinds = "/".join(s.type for s in steps)
        raise CheckpointError(
            f"profile {profile} runs Olive's {kinds} pass on the whole model in memory: {parameters / 1e9:.2f}B "
            f"parameters need about {need / 2**30:.1f} GiB, this machine has {have / 2**30:.1f} GiB available "
            f"(up to about {largest / 1e9:.1f}B parameters fit); build with a streaming profile such as "
            f"{streaming_twin(profile)}, or on a machine with more memory")


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


def input_sizes(spec: ModelSpec) -> dict[str, int]:
    """K (input features) of each decoder linear layer kind (its module path inside a layer)."""
    k = {ATTENTION_LINEARS[3]: spec.q_dim, MLP_LINEARS[2]: spec.intermediate}  # o_proj, down_proj
    return {kind: k.get(kind, spec.hidden) for kind in ATTENTION_LINEARS + MLP_LINEARS}


def group_overrides(spec: ModelSpec, group: int) -> dict[str, dict[str, int]]:
    """Olive's blockwise passes need K to be a multiple of the group: a layer whose K is not gets the largest
    power-of-two group (16 or more) that divides it, or one group per row (-1) when none does (MatMulNBits
    then holds the row in one block padded to a power of two)."""
    names = tensor_map(spec)
    out = {}
    for kind, k in input_sizes(spec).items():
        if k % group == 0:
            continue
        g = group
        while g > 16 and k % g:
            g //= 2
        g = g if k % g == 0 else -1
        out.update({names.module(i, kind): {"group_size": g} for i in range(spec.layers)})
    return out


def run(steps: list[TorchQuantStep], checkpoint: Path, work: Path, say: Callable[[str], None]) -> Path:
    """Run the steps in order on ``checkpoint``; return the folder of the quantised checkpoint."""
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    from olive.hardware.accelerator import DEFAULT_CPU_ACCELERATOR
    from olive.model import HfModelHandler
    from olive.passes.olive_pass import create_pass_from_dict
    from olive.passes.pytorch.gptq import Gptq
    from olive.passes.pytorch.kquant import KQuant
    from olive.passes.pytorch.rtn import Rtn

    classes = {"Gptq": Gptq, "Rtn": Rtn, "KQuant": KQuant}
    _register_dataset()
    src = checkpoint
    for i, step in enumerate(steps):
        opts = dict(step.options)
        calib = {k: int(opts.pop(k, v)) for k, v in CALIBRATION_OPTIONS.items()}
        fixed = group_overrides(read_spec(checkpoint), int(opts.get("group_size", 128)))
        if fixed:
            opts["overrides"] = {**fixed, **(opts.get("overrides") or {})}
            say(f"    {len(fixed)} layers take a smaller group (their input size is not a multiple of the profile's)")
        if step.type == "Gptq":
            opts.setdefault("data_config", _data_config(checkpoint, calib["calibration_samples"],
                                                        calib["calibration_tokens"]))
            say(f"    {step.type}: calibrating on {calib['calibration_samples']} x {calib['calibration_tokens']} "
                f"tokens of local text, layer by layer")
        try:
            p = create_pass_from_dict(classes[step.type], opts, disable_search=True,
                                      accelerator_spec=DEFAULT_CPU_ACCELERATOR)
        except Exception as e:  # Olive's config validation: name the option
            raise ProfileError(f"Olive pass {step.type} refused its options {opts}: {str(e).splitlines()[0]}") from None
        out = work / f"torch_quant_{i}_{step.type.lower()}"
        t0 = time.perf_counter()
        src = Path(p.run(HfModelHandler(model_path=str(src)), str(out)).model_path)
        say(f"    {step.type} done in {time.perf_counter() - t0:.0f} s")
    return src


def quantization_config(folder: Path) -> dict[str, Any]:
    """The Olive quantisation config saved with a quantised checkpoint ({} for a float one)."""
    cfg = json.loads((folder / "config.json").read_text())
    q = cfg.get("quantization_config") or {}
    return q if q.get("quant_method") == "olive" else {}
