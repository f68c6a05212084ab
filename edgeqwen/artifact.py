"""The artifact folder and its manifest, ``edgeqwen.json``.

Stdlib only: the runtime imports this on devices without the compiler. The manifest is the single
source of truth for the runtime (backend, model file, session settings, context length); nothing
is inferred from file names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from edgeqwen.errors import ArtifactError
from edgeqwen.model.sampling import SamplingDefaults

MANIFEST_NAME = "edgeqwen.json"
FORMAT_VERSION = 1
_TMP_MARKER = ".edgeqwen-partial-"
_CHUNK = 1 << 22


# The runtime section's own version: the contract between the compiler that writes it and the
# runtime that reads it. A runtime refuses a contract version it does not know instead of guessing.
# 2: sampling defaults (the checkpoint's recommended decoding); pad_token_id optional.
# 3: layers, what each decoder layer carries from step to step (KV cache or a fixed-size state).
# 4: positions (mRoPE's position_ids input) and visual_input (a vision encoder's features); a version 3
#    section reads as a version 4 one without them (positions from the mask, no visual input).
RUNTIME_CONTRACT_VERSION = 4
READABLE_CONTRACT_VERSIONS = (3, 4)
LOGITS_MODES = ("last_position", "all_positions")
# How a dynamic graph learns each token's rotary position: "mask" (from the row's attention mask, as
# GroupQueryAttention does) or "mrope" (an input position_ids [3, batch, sequence]: t, h, w; equal for text).
POSITION_KINDS = ("mask", "mrope")
TOOL_CALL_FORMATS = ("json", "xml")
STATE_KINDS = ("kv", "fixed")
STATE_DTYPES = ("float32", "float16")
# The symbolic axes of a state tensor's shape; every other axis is a fixed int.
BATCH, SEQUENCE = "batch", "sequence"
# State tensor names of the graphs each flow writes ({i}: layer, {kind}: key or value).
GENAI_KV_NAMES = ("past_key_values.{i}.{kind}", "present.{i}.{kind}")  # onnxruntime-genai's builder
STATIC_KV_NAMES = ("past_{kind}_{i}", "present_{kind}_{i}")  # edgeqwen/compiler/static/decoder.py


@dataclass(frozen=True)
class StateTensor:
    """One tensor of a layer's state: fed to the graph as ``input``, its next value read from ``output``
    (for a KV tensor, what the graph writes for this run's positions: genai graphs write them into the
    bound buffer in place; the static graphs return only the chunk's [kv_heads, chunk, head_dim]).

    ``shape`` describes ``input``: has ints and the symbolic axes "batch" (one row per sequence; axis 0 where present) and
    "sequence" (cached positions: only a KV tensor has it, sized by the backend: the capacity it grew to,
    or a static build's cache_length). E.g. genai keys ("batch", 2, "sequence", 64); a Gated DeltaNet
    conv state ("batch", 6144, 3) and recurrent state ("batch", 16, 128, 128), fixed whatever the context.
    """

    input: str
    output: str
    shape: tuple[int | str, ...]
    dtype: str  # one of STATE_DTYPES

    @property
    def batch_axis(self) -> int | None:
        return self.shape.index(BATCH) if BATCH in self.shape else None

    @property
    def sequence_axis(self) -> int | None:
        return self.shape.index(SEQUENCE) if SEQUENCE in self.shape else None

    def concrete(self, batch: int, sequence: int) -> tuple[int, ...]:
        """The shape with the symbolic axes sized: what a backend allocates."""
        sizes = {BATCH: batch, SEQUENCE: sequence}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class LayerState:
    """What one decoder layer carries from one graph run to the next.

    kind "kv": keys and values per cached position (a "sequence" axis); "fixed": a state of one size
    whatever the context (a recurrent layer's conv and recurrent state), updated by every token.
    """

    kind: str  # one of STATE_KINDS
    tensors: tuple[StateTensor, ...]

    @property
    def truncatable(self) -> bool:
        """Whether the state can be rewound by cutting its sequence axis: a KV cache forgets the positions
        past n; a fixed state has folded every token in and cannot give one back."""
        return self.kind == "kv"


def kv_layer_states(layers: int, kv_heads: int, head_dim: int, dtype: str, past: str, present: str,
                    batch: bool = True) -> tuple[LayerState, ...]:
    """``layers`` KV layers: keys and values [batch, kv_heads, sequence, head_dim] (without the batch
    axis where ``batch`` is False: the static graphs run one sequence), named by the format strings
    ``past`` / ``present`` with {i} the layer and {kind} key or value (see GENAI_KV_NAMES, STATIC_KV_NAMES)."""
    shape: tuple[int | str, ...] = ((BATCH,) if batch else ()) + (kv_heads, SEQUENCE, head_dim)
    return tuple(
        LayerState("kv", tuple(StateTensor(past.format(i=i, kind=k), present.format(i=i, kind=k), shape, dtype)
                               for k in ("key", "value")))
        for i in range(layers)
    )


@dataclass(frozen=True)
class StaticGraph:
    """One graph of a static-shape artifact: its file and the fixed number of tokens it takes per run."""

    file: str
    chunk: int
    nodes: int = 0


@dataclass(frozen=True)
class StaticSpec:
    """How to drive static-shape graphs: the KV cache the runtime owns is [layers][kv_heads, cache_length,
    head_dim]; masked attention slots hold ``mask_value``; ``graphs`` by role ("prefill", "decode")."""

    graphs: dict[str, StaticGraph]
    cache_length: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    mask_value: float

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "StaticSpec":
        """Raises TypeError, KeyError or AttributeError on a malformed table."""
        return cls(**{**raw, "graphs": {role: StaticGraph(**g) for role, g in raw["graphs"].items()}})

    def layer_states(self) -> tuple[LayerState, ...]:
        """What these graphs carry per layer: float32 KV [kv_heads, sequence, head_dim] (no batch axis; the
        sequence axis is cache_length long; present_* hold the chunk's positions). The static flow writes it into runtime.layers; calibration (a build in progress, no manifest
        yet) drives the graphs with it."""
        return kv_layer_states(self.layers, self.kv_heads, self.head_dim, "float32", *STATIC_KV_NAMES, batch=False)


@dataclass(frozen=True)
class VisualInput:
    """A graph input for a vision encoder's features [tokens, hidden]: written over the embeddings of the
    tokens whose id is one of ``placeholder_ids``, in order (row-major over [batch, sequence]). A text-only
    run feeds zero rows."""

    input: str
    hidden: int
    dtype: str  # one of STATE_DTYPES
    placeholder_ids: tuple[int, ...]

    def empty(self):
        """The zero-row feed of a run without images (numpy, imported only by the backends that run it)."""
        import numpy as np

        return np.zeros((0, self.hidden), np.dtype(self.dtype))


@dataclass
class RuntimeSpec:
    """The manifest's ``runtime`` section: everything the runtime needs, so it never guesses.

    Written by every build flow, read by the engine, the backends and the package steps (which may
    update it, e.g. ``model_file`` after an ORT-format conversion). Backend-specific fields are None
    where a backend does not use them. ``layers`` is the only source of the state tensors' names,
    shapes and dtypes: no backend re-reads them from genai_config.json or the graph.
    """

    backend: str
    execution_provider: str
    tokenizer: str
    chat_template: str
    family: str
    thinking: bool
    special_tokens: dict[str, int]
    context_length: int
    vocab_size: int
    eos_token_ids: list[int]
    logits: str  # one of LOGITS_MODES
    layers: tuple[LayerState, ...]  # one per decoder layer, in order: the state the runtime allocates and steps
    pad_token_id: int | None = None  # absent from the manifest when the checkpoint names no pad token
    # the model's recommended decoding: plain completions and chat in the template's default mode, and
    # chat with thinking off where the model card gives another setting (Qwen3)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    sampling_non_thinking: SamplingDefaults | None = None
    # the tool-call body the template teaches inside <tool_call> blocks: "json" (Hermes: Qwen2.5, Qwen3) or
    # "xml" (<function=...><parameter=...>: Qwen3-Coder, Qwen3.5); what serve's forced calls are written in
    tool_call_format: str = "json"
    session_options: dict[str, Any] = field(default_factory=dict)
    threads: int | str = "auto"
    model_file: str | None = None  # dynamic-KV graphs (genai)
    genai_config: str | None = None
    model_format: str = "onnx"  # "onnx" or "ort"
    operator_config: str | None = None  # reduced-build operator list, with model_format "ort"
    static: StaticSpec | None = None  # static-shape graphs
    positions: str = "mask"  # one of POSITION_KINDS (dynamic graphs)
    visual_input: VisualInput | None = None  # the decoder takes a vision encoder's features (Qwen3.5)
    version: int = RUNTIME_CONTRACT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = _plain(asdict(self))  # lists, as the manifest file holds them: the same in memory and on disk
        return {"version": d.pop("version"), **{k: v for k, v in d.items() if v is not None}}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "manifest") -> "RuntimeSpec":
        def fail(msg: str) -> ArtifactError:
            return ArtifactError(f"{where}: runtime section {msg}")

        if not isinstance(raw, dict):
            raise fail("is not a table")
        version = raw.get("version")
        if version not in READABLE_CONTRACT_VERSIONS:
            raise fail(f"has contract version {version!r}, this edgeqwen reads "
                       f"{' and '.join(map(str, READABLE_CONTRACT_VERSIONS))}; rebuild the artifact with this edgeqwen")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise fail(f"has unknown field(s) {', '.join(unknown)}; rebuild the artifact with this edgeqwen")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if raw.get(k) is None]
        if missing:
            raise fail(f"lacks {', '.join(missing)}")
        values = {k: v for k, v in raw.items() if v is not None}  # null = absent: the field's default
        _expect(values, fail, str, "backend", "execution_provider", "tokenizer", "chat_template", "family", "logits")
        _expect(values, fail, int, "context_length", "vocab_size")
        if values.get("tool_call_format", "json") not in TOOL_CALL_FORMATS:
            raise fail(f"has tool_call_format {values['tool_call_format']!r}; expected one of "
                       f"{', '.join(TOOL_CALL_FORMATS)}")
        if values["logits"] not in LOGITS_MODES:
            raise fail(f"has logits {values['logits']!r}; expected one of {', '.join(LOGITS_MODES)}")
        if not isinstance(values["eos_token_ids"], list) or not all(isinstance(i, int) for i in values["eos_token_ids"]):
            raise fail("has eos_token_ids that are not a list of integers")
        if values.get("pad_token_id") is not None:
            _expect(values, fail, int, "pad_token_id")
        for key in ("sampling", "sampling_non_thinking"):
            if values.get(key) is not None:
                try:
                    values[key] = SamplingDefaults.from_dict(values[key])
                except (TypeError, ValueError) as e:
                    raise fail(f"has a malformed {key} table ({e})") from None
        if values.get("static") is not None:
            values["static"] = _static_spec(values["static"], fail)
        if values.get("positions", "mask") not in POSITION_KINDS:
            raise fail(f"has positions {values['positions']!r}; expected one of {', '.join(POSITION_KINDS)}")
        if values.get("visual_input") is not None:
            values["visual_input"] = _visual_input(values["visual_input"], fail)
        values["version"] = RUNTIME_CONTRACT_VERSION  # read as this version: what it lacks took the defaults
        values["layers"] = _layer_states(values["layers"], fail)
        static = values.get("static")
        if static is not None and len(values["layers"]) != static.layers:
            raise fail(f"has {len(values['layers'])} layers but its static table {static.layers}")
        return cls(**values)

    @property
    def truncatable(self) -> bool:
        """Whether a sequence's state can be rewound (every layer truncatable); otherwise reusing a cached
        prefix that the new prompt leaves means a fresh state and a new prefill."""
        return all(layer.truncatable for layer in self.layers)


def _expect(values: dict[str, Any], fail, kind: type, *keys: str) -> None:
    for k in keys:
        if not isinstance(values[k], kind) or isinstance(values[k], bool):
            raise fail(f"field {k} must be {kind.__name__}, got {values[k]!r}")


def _visual_input(raw: Any, fail) -> VisualInput:
    try:
        v = VisualInput(**{**raw, "placeholder_ids": tuple(raw["placeholder_ids"])})
    except (TypeError, KeyError) as e:
        raise fail(f"has a malformed visual_input table ({e})") from None
    ids = v.placeholder_ids
    if (not isinstance(v.input, str) or not isinstance(v.hidden, int) or v.dtype not in STATE_DTYPES or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise fail(f"has a malformed visual_input table ({raw!r})")
    return v


def _static_spec(raw: Any, fail) -> StaticSpec:
    try:
        spec = StaticSpec.from_dict(raw)
    except (TypeError, KeyError, AttributeError) as e:
        raise fail(f"has a malformed static table ({e})") from None
    if set(spec.graphs) != {"prefill", "decode"}:
        raise fail(f"static graphs are {sorted(spec.graphs)}; expected prefill and decode")
    return spec


def _plain(value: Any) -> Any:
    """Tuples to lists, all the way down (JSON's own types)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _layer_states(raw: Any, fail) -> tuple[LayerState, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise fail("has a malformed layers table (expected a non-empty list, one table per decoder layer)")
    layers = []
    for i, item in enumerate(raw):
        try:
            layers.append(_layer_state(item))
        except ValueError as e:
            raise fail(f"has a malformed layers table (layer {i}: {e})") from None
    names = [n for layer in layers for t in layer.tensors for n in (t.input, t.output)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise fail(f"has a malformed layers table (tensor name(s) {', '.join(repeated)} used more than once)")
    return tuple(layers)


def _layer_state(raw: Any) -> LayerState:
    """One layer's table; ValueError saying what is wrong."""
    if not isinstance(raw, dict) or set(raw) != {"kind", "tensors"}:
        raise ValueError("expected a table with exactly kind and tensors")
    kind, tensors = raw["kind"], raw["tensors"]
    if kind not in STATE_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(STATE_KINDS)}")
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError("tensors must be a non-empty list")
    layer = LayerState(kind, tuple(_state_tensor(t) for t in tensors))
    for t in layer.tensors:
        if layer.truncatable != (t.sequence_axis is not None):
            want = "needs" if layer.truncatable else "cannot have"
            raise ValueError(f"tensor {t.input}: a {kind} state {want} a {SEQUENCE!r} axis, shape {list(t.shape)}")
    return layer


def _state_tensor(raw: Any) -> StateTensor:
    if not isinstance(raw, dict) or set(raw) != {"input", "output", "shape", "dtype"}:
        raise ValueError("a tensor must be a table with exactly input, output, shape and dtype")
    name, out, shape, dtype = raw["input"], raw["output"], raw["shape"], raw["dtype"]
    if not (isinstance(name, str) and name and isinstance(out, str) and out):
        raise ValueError("a tensor's input and output must be non-empty names")
    if dtype not in STATE_DTYPES:
        raise ValueError(f"tensor {name}: dtype {dtype!r} is not one of {', '.join(STATE_DTYPES)}")
    if not isinstance(shape, (list, tuple)) or not shape or not all(
            d in (BATCH, SEQUENCE) or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape):
        raise ValueError(f"tensor {name}: shape {shape!r} must list positive ints and the axes {BATCH!r}, {SEQUENCE!r}")
    if list(shape).count(BATCH) > 1 or list(shape).count(SEQUENCE) > 1 or BATCH in shape[1:]:
        raise ValueError(f"tensor {name}: shape {list(shape)} has {BATCH!r} other than once at axis 0 "
                         f"or {SEQUENCE!r} more than once")
    return StateTensor(name, out, tuple(shape), dtype)


def runtime_spec(manifest: dict[str, Any], where: str = "manifest") -> RuntimeSpec:
    return RuntimeSpec.from_dict(manifest.get("runtime"), where)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file below ``folder`` except the manifest, by relative path."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME:
            continue
        table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add format version and file hashes, then write the manifest (last file of a build)."""
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": file_table(folder)}
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder (it does not exist or is not a folder)")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        hint = " (an interrupted build leaves no manifest)" if _TMP_MARKER in folder.name else ""
        raise ArtifactError(f"{folder} is not a complete edgeqwen artifact: {MANIFEST_NAME} is missing{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: manifest is corrupt ({e})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version!r} is not supported by this edgeqwen (reads {FORMAT_VERSION})"
        )
    for key in ("files", "runtime", "profile"):
        if key not in manifest:
            raise ArtifactError(f"{path}: manifest has no '{key}' section")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], full: bool = True) -> None:
    """Raise ArtifactError naming the first file that is missing, resized or (if ``full``) altered."""
    folder = Path(folder)
    for rel, info in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"artifact {folder}: file {rel} listed in the manifest is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(
                f"artifact {folder}: file {rel} has {size} bytes, the manifest says {info['bytes']} (truncated or replaced)"
            )
        if full and sha256_file(path) != info["sha256"]:
            raise ArtifactError(f"artifact {folder}: file {rel} does not match its sha256 in the manifest (corrupt or tampered)")


def load_verified(folder: Path, full: bool = True) -> dict[str, Any]:
    manifest = read_manifest(folder)
    verify_files(folder, manifest, full=full)
    return manifest


class BuildInProgress(ArtifactError):
    """Another build holds the output folder's publish lock."""


@contextmanager
def staged_folder(final: Path, force: bool = False, wait: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` only if the block succeeds.

    A crash or kill leaves only a ``.<name>.edgeqwen-partial-<pid>`` folder without a manifest, which
    no loader accepts. With ``force``, an existing ``final`` is swapped out only after the new one
    is complete. Publishing is exclusive: the whole build holds a lock on ``final`` (released by the OS
    if the process dies), so a second build into the same folder is refused at once (or, with
    ``wait``, starts when the first is done) instead of silently replacing its result.
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    with publish_lock(final, wait):
        if final.exists() and not force:
            raise ArtifactError(f"{final} already exists; choose another -o or pass --force to replace it")
        _sweep_stale(final)
        tmp = final.parent / f".{final.name}{_TMP_MARKER}{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            if not force:  # made by something that does not take the lock (a copy, another tool)
                shutil.rmtree(tmp, ignore_errors=True)
                raise ArtifactError(f"{final} appeared while this build ran; nothing was published; "
                                    "choose another -o or pass --force to replace it")
            old = final.parent / f".{final.name}.old-{os.getpid()}-{int(time.time())}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)


def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.edgeqwen-lock"


@contextmanager
def publish_lock(final: Path, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock on publishing ``final`` (an OS file lock on a file beside it)."""
    path = lock_path(final)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd, wait):
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise BuildInProgress(f"another edgeqwen build ({who}) is writing {final}; wait for it to finish, "
                                  "pass --wait to start after it, or choose another -o")
        try:  # the holder before us may have removed the file we locked: lock the one now at the path
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        try:
            os.unlink(path)  # removed while still locked, so a waiter re-checks and locks a fresh file
        except OSError:
            pass
        os.close(fd)  # closing releases the lock


def _try_lock(fd: int, wait: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
                time.sleep(1.0)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode() or 0) or None
    except (OSError, ValueError):
        return None


def _sweep_stale(final: Path) -> None:
    """Remove partial folders left by builds whose process no longer exists."""
    for p in final.parent.glob(f".{final.name}{_TMP_MARKER}*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
