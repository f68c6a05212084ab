"""Open a Qwen checkpoint (local folder or Hub id) and refuse what the compiler cannot build.

Checks are cheap and happen before any heavy work: architecture, weight files present and whole
(safetensors headers against file sizes), dtypes, tokenizer files.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqwen.errors import CheckpointError
from edgeqwen.model.generation import GenerationSettings, read_json
from edgeqwen.model.spec import ModelSpec, SpecError, parse_spec
from edgeqwen.model.tensors import TensorMap, tensor_map

SUPPORTED_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "merges.txt", "vocab.json", "tokenizer*"]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    model_id: str  # what the user asked for: hub id or the absolute local path
    architecture: str
    family: str
    config: dict[str, Any]
    spec: ModelSpec  # what the checkpoint is, parsed once (edgeqwen.model.spec)
    tensors: TensorMap  # its tensors by role (edgeqwen.model.tensors)
    weight_files: tuple[str, ...]
    dtype: str
    tied_embeddings: bool
    config_sha256: str
    revision: str | None = None
    tensor_count: int = 0
    tensor_names: frozenset[str] = frozenset()  # every tensor the weight files hold (from their headers)
    parameter_count: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "architecture": self.architecture,
            "family": self.family,
            "dtype": self.dtype,
            "config_sha256": self.config_sha256,
            "weights_sha256": self.weights_sha256(),
            "parameters": self.parameter_count,
            "tied_embeddings": self.tied_embeddings,
            "hidden_size": s.hidden,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads,
            "head_dim": s.head_dim,
            "vocab_size": s.vocab,
            "max_position_embeddings": s.positions,
            "rope": s.rope.describe(),
        }

    def weights_sha256(self) -> str:
        """One hash over the weight files' own sha256 (stable across shard-count-preserving copies)."""
        from edgeqwen.artifact import sha256_file

        h = hashlib.sha256()
        for name in self.weight_files:
            h.update(f"{name}:{sha256_file(self.path / name)}\n".encode())
        return h.hexdigest()


def check_complete(ckpt: Checkpoint) -> None:
    """Refuse, before the export starts, a checkpoint that lacks a tensor its spec needs (a shard from
    another model, a truncated conversion): one line naming the first missing tensor."""
    missing = [n for n in ckpt.tensors.names() if n not in ckpt.tensor_names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{ckpt.path}: tensor {missing[0]}{more} is missing, which {ckpt.architecture} with "
                              "this config.json needs; is the checkpoint complete?")


def generation_settings_of(ckpt: Checkpoint, thinking: bool = False) -> GenerationSettings:
    """The checkpoint's token ids and sampling, read once by edgeqwen.model.generation's rules."""
    return ckpt.spec.generation_for(thinking)


def generation_token_ids(ckpt: Checkpoint) -> tuple[int | None, list[int], int | None]:
    """(bos, eos in the file's order, pad) as generation uses them."""
    gen = generation_settings_of(ckpt)
    return gen.bos_token_id, list(gen.eos_token_ids), gen.pad_token_id


def resolve(model: str, revision: str | None = None) -> tuple[Path, str, str | None]:
    """Local folder, or download from the Hub (real code path; tests always pass local folders)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; give the checkpoint folder (with config.json)")
        return path.resolve(), str(path.resolve()), revision
    if not _HUB_ID.match(model) or model.startswith((".", "/")):
        raise CheckpointError(f"checkpoint {model} not found: no such folder, and not a Hub id like Qwen/Qwen2.5-0.5B-Instruct")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(model, revision=revision, allow_patterns=_HUB_PATTERNS)
    except Exception as e:  # network, auth, missing repo: all mean "cannot get it"
        raise CheckpointError(f"could not download {model} from the Hugging Face Hub: {type(e).__name__}: {e}") from None
    return Path(local), model, revision


def open_checkpoint(model: str, revision: str | None = None) -> Checkpoint:
    path, model_id, revision = resolve(model, revision)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face checkpoint folder?")
    raw = config_path.read_bytes()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from None
    try:
        generation = read_json(path / "generation_config.json")
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path / 'generation_config.json'} is not valid ({e}); fix or remove it") from None
    try:
        refuse_unbuilt(parse_spec(config, generation, where=str(config_path)), config_path)  # before reading weights
        files = _weight_files(path)
        dtypes, names, params = _check_safetensors(path, files)
        spec = parse_spec(config, generation, names, where=str(config_path))
    except SpecError as e:
        raise CheckpointError(str(e)) from None
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path} has no tokenizer.json (the runtime needs the fast tokenizer file)")
    dtype = "+".join(sorted(SUPPORTED_DTYPES[d] for d in dtypes))
    return Checkpoint(
        path=path,
        model_id=model_id,
        architecture=spec.architecture,
        family=spec.family,
        config=config,
        spec=spec,
        tensors=tensor_map(spec, names),
        weight_files=tuple(files),
        dtype=dtype,
        tied_embeddings=spec.tied,
        config_sha256=hashlib.sha256(raw).hexdigest(),
        revision=revision,
        tensor_count=len(names),
        tensor_names=frozenset(names),
        parameter_count=params,
    )


def refuse_unbuilt(spec: ModelSpec, where: Path) -> None:
    """A model the spec describes but whose layer kinds have no layer writer here yet: refused in one line."""
    kinds = spec.unbuilt_kinds()
    if kinds:
        n = sum(k.mixer in kinds for k in spec.layer_kinds)
        raise CheckpointError(f"{where}: {spec.architecture} has {n} of {spec.layers} layers of kind "
                              f"{', '.join(kinds)} (Gated DeltaNet), which edgeqwen reads but cannot compile yet; "
                              f"it builds Qwen2, Qwen2.5 and Qwen3 checkpoints")


def _weight_files(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is corrupt ({e})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{path}: weight shard(s) {', '.join(missing)} named in {index.name} are missing")
        return files
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if files:
        return files
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(f"{path} has only PyTorch pickle weights; edgeqwen reads safetensors (fp32, fp16, bf16)")
    raise CheckpointError(f"{path} has no weights: no *.safetensors file found")


def _check_safetensors(path: Path, files: list[str]) -> tuple[set[str], set[str], int]:
    """Parse each header and check the file holds every byte it promises."""
    dtypes: set[str] = set()
    names: set[str] = set()
    params = 0
    for name in files:
        f = path / name
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{f} is truncated or not a safetensors file ({size} bytes)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > size - 8 or hlen > 100_000_000:
                raise CheckpointError(f"{f} is truncated or corrupt (header of {hlen} bytes in a {size}-byte file)")
            try:
                header = json.loads(fh.read(hlen))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{f} has a corrupt safetensors header") from None
        end = 0
        for tname, info in header.items():
            if tname == "__metadata__":
                continue
            dt = info.get("dtype")
            if dt not in SUPPORTED_DTYPES:
                raise CheckpointError(
                    f"{f}: tensor {tname} has dtype {dt}; edgeqwen builds from fp32, fp16 or bf16 weights "
                    "(pre-quantized checkpoints are not supported)"
                )
            dtypes.add(dt)
            end = max(end, info["data_offsets"][1])
            n = 1
            for d in info["shape"]:
                n *= d
            params += n
            names.add(tname)
        if 8 + hlen + end > size:
            raise CheckpointError(
                f"{f} is truncated: its header describes {8 + hlen + end} bytes but the file has {size}"
            )
    return dtypes, names, params
