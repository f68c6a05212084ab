"""LoRA adapters (peft) merged into a checkpoint before the build, one tensor at a time.

A peft LoRA adapter stores, for each adapted linear layer W [out, in], two matrices
A = ``...<module>.lora_A.weight`` [r, in] and B = ``...<module>.lora_B.weight`` [out, r]; the
fine-tuned layer computes W + s * B @ A with s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA),
times the user's ``--adapter-scale``. The merged checkpoint is written shard by shard and tensor by
tensor (read through the base's memory map, written through our own safetensors writer), so memory
holds one base tensor and its update at a time whatever the model's size.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeqwen.errors import CheckpointError
from edgeqwen.model.tensors import TensorMap
from edgeqwen.safetensors_io import SIZES, TensorFile, write_safetensors

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
# peft options that change what a merged layer computes beyond W + s B A
_UNSUPPORTED = {"use_dora": "DoRA", "modules_to_save": "fully trained extra modules", "lora_bias": "a LoRA bias",
                "fan_in_fan_out": "transposed (Conv1D) weights", "rank_pattern": "per-module ranks",
                "alpha_pattern": "per-module alphas", "trainable_token_indices": "trained token embeddings",
                "target_parameters": "adapted parameters", "layer_replication": "replicated layers",
                "use_qalora": "QA-LoRA", "use_bdlora": "BD-LoRA"}
_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: dict[str, Any]
    pairs: dict[str, tuple[str, str]]  # base weight name -> (lora_A key, lora_B key)
    scale: float  # lora_alpha / r (or / sqrt(r)) times the user's scale
    sha256: str

    def describe(self, user_scale: float) -> dict[str, Any]:
        c = self.config
        return {"path": str(self.path), "sha256": self.sha256, "peft_type": c.get("peft_type"), "r": c.get("r"),
                "lora_alpha": c.get("lora_alpha"), "use_rslora": bool(c.get("use_rslora")),
                "target_modules": sorted({name.split(".")[-2] for name in self.pairs}),
                "base_model_name_or_path": c.get("base_model_name_or_path"), "user_scale": user_scale,
                "merged_scale": self.scale, "layers": len(self.pairs)}


def open_adapter(folder: str | Path, user_scale: float = 1.0) -> Adapter:
    """Read and check a peft LoRA adapter folder; a one-line CheckpointError for anything else."""
    folder = Path(folder)
    where = f"adapter {folder}"
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{where}: expected a peft adapter folder with {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: {CONFIG} is not readable JSON ({e})") from None
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise CheckpointError(f"{where}: adapter type {kind or 'unknown'} is not supported; only LoRA adapters merge")
    for key, why in _UNSUPPORTED.items():
        if config.get(key):
            raise CheckpointError(f"{where}: {why} ({key}) is not supported; merge plain LoRA adapters only")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: bias={config['bias']!r} adapters are not supported (bias must be 'none')")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{where}: {CONFIG} needs an integer r >= 1 and a numeric lora_alpha")
    scale = (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r) * user_scale
    pairs = _pairs(folder / WEIGHTS, where)
    return Adapter(folder.resolve(), config, pairs, scale, _sha256(folder))


def _pairs(weights: Path, where: str) -> dict[str, tuple[str, str]]:
    found: dict[str, dict[str, str]] = {}
    with TensorFile(weights) as f:
        for key in f.entries:
            m = _KEY.match(key)
            if m is None:
                raise CheckpointError(f"{where}: tensor {key} is not a LoRA A/B matrix; only LoRA weights can merge")
            found.setdefault(m["module"] + ".weight", {})[m["ab"]] = key
    if not found:
        raise CheckpointError(f"{where}: {WEIGHTS} holds no LoRA matrices")
    half = sorted(name for name, ab in found.items() if set(ab) != {"A", "B"})
    if half:
        raise CheckpointError(f"{where}: {half[0]} has only one of lora_A/lora_B")
    return {name: (ab["A"], ab["B"]) for name, ab in sorted(found.items())}


def _sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def tensor_shapes(path: Path, weight_files: list[str]) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of a checkpoint, from the safetensors headers (no data read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for fname in weight_files:
        with TensorFile(path / fname) as f:
            shapes.update({name: f.shape(name) for name in f.entries})
    return shapes


def check_against(adapter: Adapter, shapes: dict[str, tuple[int, ...]], model_id: str, names: TensorMap) -> None:
    """Every adapted layer must be a decoder linear layer of this checkpoint (by its tensor map) with
    matching shapes."""
    where = f"adapter {adapter.path}"
    linear = set(names.linear_weights())
    with TensorFile(adapter.path / WEIGHTS) as f:
        for name, (ka, kb) in adapter.pairs.items():
            if name not in linear and name.split(".")[-2] not in _LINEAR:
                raise CheckpointError(f"{where}: target module {name} is not one of the linear layers "
                                      f"{', '.join(_LINEAR)}")
            if name not in shapes or name not in linear:
                raise CheckpointError(f"{where}: targets {name}, which checkpoint {model_id} does not have "
                                      f"(an adapter for another base model?)")
            a, b = f.shape(ka), f.shape(kb)
            out, inp = shapes[name]
            if len(a) != 2 or len(b) != 2 or a[1] != inp or b[0] != out or a[0] != b[1]:
                raise CheckpointError(f"{where}: {name} is [{out}, {inp}] in checkpoint {model_id} but the adapter's "
                                      f"A is {list(a)} and B is {list(b)}: an adapter for another base model")


def merge(ckpt_path: Path, weight_files: list[str], adapter: Adapter, out: Path,
          log: Callable[[str], None] = lambda s: None) -> Path:
    """Write ``ckpt_path`` with ``adapter`` merged into ``out`` (same files, same shard layout)."""
    out.mkdir(parents=True)
    for item in ckpt_path.iterdir():
        if item.is_file() and item.name not in weight_files:
            shutil.copy2(item, out / item.name)
    merged = 0
    with TensorFile(adapter.path / WEIGHTS) as lora:
        for fname in weight_files:
            with TensorFile(ckpt_path / fname) as base:
                def tensor(name: str):
                    w = base.get(name)
                    if name not in adapter.pairs:
                        return w
                    ka, kb = adapter.pairs[name]
                    # W [out, in] += s * B [out, r] @ A [r, in], summed in fp32, stored in W's dtype
                    delta = lora.get(kb).float() @ lora.get(ka).float()
                    return (w.float() + adapter.scale * delta).to(w.dtype)

                unsupported = sorted({code for _, code, _ in base.layout} - set(SIZES))
                if unsupported:
                    raise CheckpointError(f"{ckpt_path / fname}: tensors of type {', '.join(unsupported)} cannot "
                                          f"take a merged adapter (fp32, fp16 and bf16 can)")
                merged += sum(1 for name, _, _ in base.layout if name in adapter.pairs)
                write_safetensors(out / fname, base.layout, tensor, base.metadata)
    if merged != len(adapter.pairs):
        raise CheckpointError(f"adapter {adapter.path}: merged {merged} of its {len(adapter.pairs)} layers")
    log(f"    merged LoRA (r={adapter.config['r']}, scale {adapter.scale:g}) into {merged} layers")
    return out
