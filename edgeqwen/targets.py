"""Target profiles: one small TOML file per hardware profile in ``targets/``.

A profile says which Olive passes build the graph, which of our own graph passes follow, the
session settings the runtime applies, and the bounds validation must meet. One frozen dataclass
validates a file; unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeqwen import providers
from edgeqwen.errors import ProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRECISIONS = ("fp32", "fp16", "int8", "int4", "uint8-qdq")


def targets_dir() -> Path:
    """``$EDGEQWEN_TARGETS``, else the profiles an installed wheel carries (``edgeqwen/profiles``, copied
    from ``targets/`` by setup.py), else the repository's ``targets/`` (source checkout, editable install)."""
    env = os.environ.get("EDGEQWEN_TARGETS")
    if env:
        if not Path(env).is_dir():
            raise ProfileError(f"EDGEQWEN_TARGETS={env} is not a folder; point it at a folder of profile .toml files")
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "profiles", here.parent / "targets"):
        if any(candidate.glob("*.toml")):
            return candidate
    raise ProfileError("cannot find the target profiles (edgeqwen/profiles in an installed wheel, targets/ in a "
                       "source checkout); reinstall edgeqwen or set EDGEQWEN_TARGETS to a folder of profiles")


@dataclass(frozen=True)
class OlivePass:
    """One Olive pass: its Olive type name and the options passed to it unchanged."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationBounds:
    """Acceptance bounds for ``edgeqwen validate``; None means "not checked"."""

    max_abs_logit_diff: float | None = None
    max_kl_mean: float | None = None
    max_kl_p99: float | None = None
    min_top1_agreement: float | None = None
    min_greedy_match: int | None = None
    greedy_tokens: int = 48


# The ModelBuilder graph's node names an OnnxBlockWiseRtnQuantization pass may list in nodes_to_include,
# and which weights they are; the streaming exporter and `edgeqwen plan` both read passes through this.
# Olive's PyTorch weight quantisation passes, which a genai profile may list before ModelBuilder (they run on
# the transformers model; edgeqwen.compiler.torch_quant)
TORCH_PASSES = ("Gptq", "Rtn", "KQuant")
def table_block(block: int, hidden: int) -> int:
    """The block a quantised embedding table is stored with: GatherBlockQuantized needs the block to divide
    the hidden size (every Qwen's does at 128); a smaller hidden size takes the largest power of two, 16
    or more, that does; 0 when none does (the table stays float)."""
    while block > 16 and hidden % block:
        block //= 2
    return 0 if hidden % block else block


RTN_NODE_ROLES = {"/lm_head/MatMul": "lm_head", "/model/embed_tokens/Gather": "embedding"}


def rtn_roles(options: dict[str, Any], where: str) -> list[str]:
    """Which weights an OnnxBlockWiseRtnQuantization pass quantises: all (its default; Olive's pass quantises
    Gather tables too), or the lm_head / embedding nodes it includes by name."""
    if options.get("nodes_to_exclude"):
        raise ProfileError(f"{where}: nodes_to_exclude is not one the streaming exporter applies; list the nodes "
                           f"to include instead, or build with --exporter olive")
    include = options.get("nodes_to_include")
    if not include:
        return ["lm_head", "embedding", "weights"]
    unknown = [n for n in include if n not in RTN_NODE_ROLES]
    if unknown:
        raise ProfileError(f"{where}: nodes_to_include {unknown} are not ones the streaming exporter knows "
                           f"({', '.join(RTN_NODE_ROLES)}); build with --exporter olive")
    return [RTN_NODE_ROLES[n] for n in include]


@dataclass(frozen=True)
class QualityBounds:
    """What quantisation may cost, measured against the fp32 checkpoint (not the parity gate): a bound is
    the user's choice (none by default); above ``warn_kl_mean`` the build warns and names the tensors that
    lost most."""

    max_kl_mean: float | None = None
    max_kl_p99: float | None = None
    warn_kl_mean: float = 0.1  # nats: about where greedy text starts to drift from the fp32 model's


@dataclass(frozen=True)
class StaticShapes:
    """Fixed shapes of a ``backend = "static"`` build: the prefill graph's chunk and the KV cache length
    (also the artifact's context length)."""

    prefill_chunk: int
    cache_length: int


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    device: str
    execution_provider: str
    precision: str
    backend: str
    olive_passes: tuple[OlivePass, ...]
    graph_passes: tuple[str, ...] = ()
    package_steps: tuple[str, ...] = ()
    session_options: dict[str, Any] = field(default_factory=dict)
    validation: ValidationBounds = field(default_factory=ValidationBounds)
    quality: QualityBounds = field(default_factory=QualityBounds)
    static_shapes: StaticShapes | None = None
    default: bool = False
    source: str = field(default="", compare=False)  # where it was read from, for messages; not in manifests

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        d["olive_passes"] = [{"type": p.type, **p.options} for p in self.olive_passes]
        d["graph_passes"] = list(self.graph_passes)
        d["package_steps"] = list(self.package_steps)
        d["validation"] = {k: v for k, v in d["validation"].items() if v is not None}
        d["quality"] = {k: v for k, v in d["quality"].items() if v is not None}
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str) -> "TargetProfile":
        def fail(msg: str) -> ProfileError:
            return ProfileError(f"profile {source}: {msg}")

        allowed = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            return_unknown = ", ".join(unknown)
            raise fail(f"unknown key(s) {return_unknown}; allowed: {', '.join(sorted(allowed))}")
        required = ("name", "description", "device", "execution_provider", "precision", "backend")
        missing = [k for k in required if k not in raw]
        if missing:
            raise fail(f"missing key(s) {', '.join(missing)}")
        for key in ("name", "description", "device", "execution_provider", "precision", "backend"):
            if not isinstance(raw[key], str) or not raw[key]:
                raise fail(f"'{key}' must be a non-empty string")
        if raw["precision"] not in PRECISIONS:
            raise fail(f"precision '{raw['precision']}' is not one of {', '.join(PRECISIONS)}")
        if raw["execution_provider"] not in providers.NAMES:
            raise fail(f"execution_provider '{raw['execution_provider']}' is not one of {', '.join(providers.NAMES)}")
        # backend, graph_passes and package_steps name things the compiler and runtime register; they
        # check them (edgeqwen.compiler.pipeline.check_profile), so this file imports no compiler code.

        # genai builds start with Olive's ModelBuilder; static builds export their own graphs and
        # may then run Olive passes (quantisation) on them, or none at all.
        passes_raw = raw.get("olive_passes", [])
        if not isinstance(passes_raw, list) or (raw["backend"] == "genai" and not passes_raw):
            raise fail("'olive_passes' must be a non-empty list of tables")
        passes = []
        for i, p in enumerate(passes_raw):
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise fail(f"olive_passes[{i}] needs a string 'type'")
            passes.append(OlivePass(p["type"], {k: v for k, v in p.items() if k != "type"}))

        graph_passes = _names(raw, "graph_passes", fail)
        steps = _names(raw, "package_steps", fail)

        session = raw.get("session_options", {})
        if not isinstance(session, dict):
            raise fail("'session_options' must be a table")

        vraw = _numbers(raw, "validation", ValidationBounds, fail)
        qraw = _numbers(raw, "quality", QualityBounds, fail)

        static = _static_shapes(raw, fail)

        default = raw.get("default", False)
        if not isinstance(default, bool):
            raise fail("'default' must be true or false")
        return cls(
            name=raw["name"],
            description=raw["description"],
            device=raw["device"],
            execution_provider=raw["execution_provider"],
            precision=raw["precision"],
            backend=raw["backend"],
            olive_passes=tuple(passes),
            graph_passes=tuple(graph_passes),
            package_steps=tuple(steps),
            session_options=dict(session),
            validation=ValidationBounds(**vraw),
            quality=QualityBounds(**qraw),
            static_shapes=static,
            default=default,
            source=source,
        )


def _numbers(raw: dict[str, Any], key: str, kind: type, fail) -> dict[str, float]:
    """A table of numbers whose keys are ``kind``'s fields (the [validation] and [quality] sections)."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise fail(f"'{key}' must be a table")
    allowed = {f.name for f in fields(kind)}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise fail(f"unknown {key} key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    for k, v in table.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise fail(f"{key}.{k} must be a number")
    return table


def _static_shapes(raw: dict[str, Any], fail) -> StaticShapes | None:
    """Required with ``backend = "static"``, refused otherwise."""
    table = raw.get("static_shapes")
    if raw["backend"] != "static":
        if table is not None:
            raise fail("'static_shapes' only applies to backend = \"static\"")
        return None
    if not isinstance(table, dict):
        raise fail("backend = \"static\" needs a [static_shapes] table (prefill_chunk, cache_length)")
    allowed = {f.name for f in fields(StaticShapes)}
    if set(table) != allowed:
        raise fail(f"[static_shapes] needs exactly {', '.join(sorted(allowed))}; got {', '.join(sorted(table)) or 'nothing'}")
    for k, v in table.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise fail(f"static_shapes.{k} must be a positive integer")
    if table["prefill_chunk"] < 2 or table["prefill_chunk"] >= table["cache_length"]:
        raise fail("static_shapes.prefill_chunk must be at least 2 and below cache_length")
    return StaticShapes(**table)


def _names(raw: dict[str, Any], key: str, fail) -> list[str]:
    """A profile list of registered names (``graph_passes``, ``package_steps``)."""
    names = raw.get(key, [])
    if not isinstance(names, list) or not all(isinstance(g, str) for g in names):
        raise fail(f"'{key}' must be a list of names")
    return names


def load_profile_file(path: Path) -> TargetProfile:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"profile {path}: not valid TOML ({e})") from None
    profile = TargetProfile.from_dict(raw, str(path))
    if profile.name != Path(path).stem:
        raise ProfileError(f"profile {path}: name '{profile.name}' must match the file name '{Path(path).stem}'")
    return profile


def list_profiles(folder: Path | None = None) -> list[TargetProfile]:
    folder = folder or targets_dir()
    return [load_profile_file(p) for p in sorted(folder.glob("*.toml"))]


def default_profile_name(folder: Path | None = None) -> str:
    defaults = [p.name for p in list_profiles(folder) if p.default]
    if len(defaults) != 1:
        raise ProfileError(f"exactly one profile must have default = true, found {defaults or 'none'}")
    return defaults[0]


def load_profile(name_or_path: str, folder: Path | None = None) -> TargetProfile:
    """A profile by name (``cpu-int4``) or by path to a ``.toml`` file."""
    as_path = Path(name_or_path)
    if as_path.suffix == ".toml":
        if not as_path.is_file():
            raise ProfileError(f"profile file {as_path} does not exist")
        return load_profile_file(as_path)
    folder = folder or targets_dir()
    path = folder / f"{name_or_path}.toml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(folder.glob("*.toml")))
        raise ProfileError(f"unknown target '{name_or_path}'; available: {names}")
    return load_profile_file(path)
