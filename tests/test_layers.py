"""The import graph follows the data flow: checkpoint -> profile -> compiler -> artifact -> runtime ->
reports. Every import is read from the source (module level and inside functions), so a lazy import
that climbs a layer fails here too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgeqwen"

# module (or package) -> the edgeqwen modules it may import. Leaves first.
LEAVES = {"edgeqwen.errors", "edgeqwen.providers", "edgeqwen.argtypes", "edgeqwen.corpus", "edgeqwen.safetensors_io",
          "edgeqwen.allocator"}
ALLOWED: dict[str, set[str]] = {
    "edgeqwen.errors": set(),
    "edgeqwen.allocator": set(),  # glibc's malloc_trim (stdlib ctypes): GPTQ's layers, validation's sides
    "edgeqwen.providers": set(),
    "edgeqwen.argtypes": set(),
    "edgeqwen.corpus": set(),
    "edgeqwen.safetensors_io": {"edgeqwen.errors"},  # numpy-only reader/writer: the compiler and the reference
    "edgeqwen.extras": {"edgeqwen.errors"},
    "edgeqwen.targets": {"edgeqwen.errors", "edgeqwen.providers"},
    # the build's peak memory from the model's shape (stdlib): what the compiler checks and the planner shows
    "edgeqwen.build_memory": {"edgeqwen.model"},
    # a profile's passes read once (stdlib): what the exporter writes and what the planner counts
    "edgeqwen.profile_passes": {"edgeqwen.errors", "edgeqwen.targets", "edgeqwen.build_memory"},
    # the one description of a checkpoint (stdlib): what the compiler, the references and the planner read
    "edgeqwen.model": {"edgeqwen.errors", "edgeqwen.model"},
    "edgeqwen.artifact": {"edgeqwen.errors", "edgeqwen.model"},  # the contract carries the model's sampling record
    "edgeqwen.summary": {"edgeqwen.model"},
    "edgeqwen.runtime": LEAVES | {"edgeqwen.artifact", "edgeqwen.runtime"},
    # (build_memory: MemAvailable, which the parity twin sizes its fp32 weights by)
    "edgeqwen.quality": LEAVES | {"edgeqwen.model", "edgeqwen.targets", "edgeqwen.artifact", "edgeqwen.runtime",
                                  "edgeqwen.build_memory", "edgeqwen.quality"},
    "edgeqwen.bench": LEAVES | {"edgeqwen.artifact", "edgeqwen.runtime", "edgeqwen.quality", "edgeqwen.summary",
                                "edgeqwen.bench"},
    # fixture makers shrink published configs and read them back through the one parser
    "edgeqwen.testmodels": LEAVES | {"edgeqwen.model", "edgeqwen.testmodels"},
    # plan reads profiles and bench reports (and this device's facts); it never touches the compiler
    # (shapes through edgeqwen.model's parser, the one every consumer uses)
    "edgeqwen.plan": LEAVES | {"edgeqwen.model", "edgeqwen.targets", "edgeqwen.profile_passes", "edgeqwen.bench",
                               "edgeqwen.build_memory", "edgeqwen.plan"},
    # the OpenAI-compatible server sits on the runtime only: it can ship without the compiler
    "edgeqwen.server": LEAVES | {"edgeqwen.artifact", "edgeqwen.runtime", "edgeqwen.extras", "edgeqwen.server"},
    "edgeqwen.compiler": LEAVES | {"edgeqwen.model", "edgeqwen.targets", "edgeqwen.profile_passes", "edgeqwen.artifact",
                                   "edgeqwen.build_memory",
                                   "edgeqwen.runtime", "edgeqwen.quality",
                                   "edgeqwen.compiler"},
}
TOP = {"edgeqwen.cli", "edgeqwen.demo", "edgeqwen"}  # entry points: may import anything


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def edgeqwen_imports(path: Path, source: str | None = None) -> set[str]:
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    name = module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".")[: -node.level + (path.name == "__init__.py")]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                # `from edgeqwen.x import y`: y is a module or a name in edgeqwen.x
                subs = {f"{node.module}.{a.name}" for a in node.names} & ALL_MODULES
                found |= subs if node.module == "edgeqwen" else {node.module} | subs
    return {m for m in found if m == "edgeqwen" or m.startswith("edgeqwen.")}


ALL_MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str:
    for key in sorted(ALLOWED, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    return module


def allowed(importer: str, imported: str) -> bool:
    if importer in TOP:
        return True
    if imported == "edgeqwen":
        return False
    return layer_of(imported) in ALLOWED[layer_of(importer)] or \
        any(imported == a or imported.startswith(a + ".") for a in ALLOWED[layer_of(importer)])


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        assert name in TOP or layer_of(name) in ALLOWED, f"{name} belongs to no layer of this test"


def test_no_module_imports_a_layer_above_it():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in sorted(edgeqwen_imports(path)):
            if not allowed(importer, imported):
                bad.append(f"{importer} imports {imported}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_the_checker_catches_a_climbing_import():
    """A runtime module importing the compiler, even inside a function, is caught."""
    fake = PACKAGE / "runtime" / "_layer_probe.py"  # never written: its source is given
    imports = edgeqwen_imports(fake, "def f():\n    from edgeqwen.compiler.pipeline import build\n    return build\n")
    assert "edgeqwen.compiler.pipeline" in imports
    assert not allowed(module_name(fake), "edgeqwen.compiler.pipeline")
