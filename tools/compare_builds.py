"""Build every fixture x every profile, and compare two such sets byte for byte.

A refactoring that claims "behaviour unchanged" shows it here: build the set with the old tree and with
the new one (same checkpoints), then compare. Graph and weight files must be byte-identical; manifests
equal but for what a clock or a path writes (timestamps, durations, the output folder).

    # the old tree (e.g. a `git worktree add /tmp/base HEAD~1`), then this one, on the same checkpoints:
    PYTHONPATH=/tmp/base python tools/compare_builds.py build /tmp/cmp/before --checkpoints /tmp/cmp/ck
    python tools/compare_builds.py build /tmp/cmp/after --checkpoints /tmp/cmp/ck
    python tools/compare_builds.py compare /tmp/cmp/before /tmp/cmp/after

A profile that refuses a fixture is recorded as ``<profile>.refused`` (its one-line message), and compared too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

# keys whose values are clocks, durations or folders, not behaviour
_VOLATILE = {"created", "seconds", "step_seconds", "elapsed_s", "output", "path", "peak_rss_mb_after_step",
             "peak_rss_mb", "model_id"}  # model_id: the local checkpoint's path (the trained model's differs per tree)
TINY = ("tiny-qwen2", "tiny-qwen2.5", "tiny-qwen3", "tiny-qwen3-tied", "tiny-qwen2.5-yarn",
        "tiny-qwen2.5-coder", "tiny-qwen2.5-math")


def _checkpoint(name: str, root: Path) -> Path:
    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    if name == "small-qwen3":
        from edgeqwen.testmodels.trained import DEFAULT_DIR

        return DEFAULT_DIR
    from edgeqwen.testmodels.fixtures import make_checkpoint

    return make_checkpoint(name, folder)


def build_all(out: Path, checkpoints: Path, fixtures: list[str], profiles: list[str]) -> None:
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.errors import EdgeQwenError

    t0, total, done = time.perf_counter(), len(fixtures) * len(profiles), 0
    for name in fixtures:
        ck = _checkpoint(name, checkpoints)
        for profile in profiles:
            dest = out / name / profile
            if not (dest / "edgeqwen.json").is_file() and not dest.with_suffix(".refused").is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    build(str(ck), profile, dest, quiet=True, loss_text=False)
                except EdgeQwenError as e:
                    dest.with_suffix(".refused").write_text(f"{type(e).__name__}: {e}\n")
            done += 1
            elapsed = time.perf_counter() - t0
            print(f"{done}/{total} {name} {profile}: {elapsed:.0f} s elapsed, "
                  f"~{elapsed / done * (total - done):.0f} s left", file=sys.stderr, flush=True)


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k in b else 'before'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif a != b:
        out.append(f"{where}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}")


# Where a build writes its own folder or a temporary name into a side file (ORT's operator config and
# usability reports name the files they read): the same text, wherever the build ran.
_PATHS = re.compile(r"/\S*?\.edgeqwen-partial-\d+/artifact/|tmp\w+(?=\.without_runtime_opt)")


def _text(path: Path) -> str:
    return _PATHS.sub("<build>/", path.read_text(encoding="utf-8", errors="replace"))


def _ort_digest(path: Path) -> str:
    """sha256 over an ORT-format model's graph: every node (op, domain, name, inputs, outputs, attributes)
    and every initializer (name, type, dims, bytes), in order. The file's kernel-type table is left out:
    onnxruntime writes it from a hash map, so two conversions of one graph differ there (measured: 649 of
    78 MB bytes between two runs of the same build)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(path.read_bytes(), 0).Model().Graph()
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        for part in parts:
            h.update(part if isinstance(part, bytes) else repr(part).encode())

    def tensor(t) -> None:
        put(t.Name(), t.DataType(), [t.Dims(j) for j in range(t.DimsLength())], t.RawDataAsNumpy().tobytes()
            if t.RawDataLength() else [t.StringData(j) for j in range(t.StringDataLength())])

    for i in range(graph.NodesLength()):
        n = graph.Nodes(i)
        put(n.OpType(), n.Domain(), n.Name(), [n.Inputs(j) for j in range(n.InputsLength())],
            [n.Outputs(j) for j in range(n.OutputsLength())])
        for j in range(n.AttributesLength()):
            a = n.Attributes(j)
            put(a.Name(), a.Type(), a.I(), a.F(), a.S(), [a.Ints(k) for k in range(a.IntsLength())],
                [a.Floats(k) for k in range(a.FloatsLength())])
            if a.T() is not None:
                tensor(a.T())
    for i in range(graph.InitializersLength()):
        tensor(graph.Initializers(i))
    return h.hexdigest()


def _same(a: Path, b: Path) -> bool:
    if a.suffix == ".ort":
        return _ort_digest(a) == _ort_digest(b)
    if a.read_bytes() == b.read_bytes():
        return True
    return a.suffix in (".config", ".txt") and _text(a) == _text(b)


def compare(before: Path, after: Path, common: bool = False, ignore_runtime: tuple[str, ...] = ()) -> int:
    """``common``: compare only the builds both folders hold (a partial run). ``ignore_runtime``: runtime
    contract fields a deliberate contract change adds or bumps (said in the output)."""
    problems: list[str] = []
    items = sorted({p.relative_to(before) for p in before.glob("*/*") if p.is_dir() or p.suffix == ".refused"})
    if common:
        items = [rel for rel in items if (after / rel).exists()]
    for rel in items:
        a, b = before / rel, after / rel
        if not b.exists():
            problems.append(f"{rel}: missing after")
            continue
        if a.is_file():
            if a.read_text() != b.read_text():
                problems.append(f"{rel}: refused differently: {a.read_text().strip()} / {b.read_text().strip()}")
            continue
        files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
        files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
        if files_a != files_b:
            problems.append(f"{rel}: files differ: {sorted(map(str, files_a ^ files_b))}")
        for f in sorted(files_a & files_b):
            if f.name == "edgeqwen.json":
                diffs: list[str] = []
                ma, mb = (_stable(json.loads((x / f).read_text())) for x in (a, b))
                for m in (ma, mb):
                    # files compared by content above (ORT graphs, path-bearing side files): not by their hashes
                    for name in [n for n in m.get("files", {}) if Path(n).suffix in (".ort", ".config", ".txt")]:
                        m["files"].pop(name)
                    if ignore_runtime:
                        for key in ignore_runtime:
                            m.get("runtime", {}).pop(key, None)
                _diff(ma, mb, "manifest", diffs)
                problems += [f"{rel}/{d}" for d in diffs]
            elif not _same(a / f, b / f):
                problems.append(f"{rel}/{f}: differs")
    for rel in [] if common else sorted({p.relative_to(after) for p in after.glob("*/*")} - set(items)):
        problems.append(f"{rel}: only after")
    also = f" and the runtime fields {', '.join(ignore_runtime)}" if ignore_runtime else ""
    print("\n".join(problems) or f"{len(items)} builds: graph and weight files byte-identical (ORT-format graphs by "
          f"content), manifests equal but for timestamps, durations, peak memory{also}")
    return 1 if problems else 0


def main() -> int:
    from edgeqwen.targets import list_profiles

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build every fixture x profile into a folder")
    b.add_argument("out", type=Path)
    b.add_argument("--checkpoints", type=Path, required=True, help="where the fixture checkpoints are (made if absent)")
    b.add_argument("--fixtures", nargs="+", default=[*TINY, "small-qwen3"])
    b.add_argument("--profiles", nargs="+", default=None, help="default: every profile")
    c = sub.add_parser("compare", help="compare two folders made by build")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--common", action="store_true", help="only the builds both folders hold")
    c.add_argument("--ignore-runtime", nargs="*", default=[], help="runtime contract fields a contract change "
                   "adds or bumps (e.g. version layers)")
    a = p.parse_args()
    if a.cmd == "compare":
        return compare(a.before, a.after, a.common, tuple(a.ignore_runtime))
    build_all(a.out, a.checkpoints, a.fixtures, a.profiles or [pr.name for pr in list_profiles()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
