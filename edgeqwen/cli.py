"""The ``edgeqwen`` console script. Each subcommand imports its heavy modules only when it runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgeqwen.errors import EdgeQwenError


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgeqwen.targets import list_profiles

    profiles = list_profiles()
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        mark = " (default)" if p.default else ""
        print(f"{p.name:<{width}}  {p.precision:<9} {p.description}{mark}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from edgeqwen.build.pipeline import build
    from edgeqwen.inspect import format_manifest
    from edgeqwen.targets import default_profile_name

    target = args.target or default_profile_name()
    result = build(args.model, target, Path(args.output) if args.output else None, validate=not args.no_validate,
                   force=args.force, revision=args.revision, quiet=args.quiet)
    print(format_manifest(result.manifest, str(result.folder)))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from edgeqwen.runtime.engine import Engine
    from edgeqwen.targets import TargetProfile
    from edgeqwen.validate import Reference, validate

    engine = Engine(args.artifact)
    profile = TargetProfile.from_dict(engine.manifest["profile"], f"{args.artifact} manifest")
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    result = validate(engine, Reference(args.reference), profile.validation, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from edgeqwen.inspect import validation_lines

        print("\n".join(validation_lines(result)))
    return 0 if result["passed"] else 3


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edgeqwen.artifact import load_verified, read_manifest
    from edgeqwen.inspect import format_manifest

    manifest = load_verified(Path(args.artifact)) if args.verify else read_manifest(Path(args.artifact))
    print(json.dumps(manifest, indent=2) if args.json else format_manifest(manifest, args.artifact))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgeqwen.bench.run import bench
    from edgeqwen.bench.speed import SpeedPlan

    if args.quality and not args.reference:
        raise EdgeQwenError("--quality needs --reference MODEL (the checkpoint the artifact was built from)")
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    plan = SpeedPlan(prompt_lengths=ints(args.prompt_lengths), depths=ints(args.depths),
                     decode_tokens=args.decode_tokens, reps=args.reps)
    out = Path(args.output or f"bench-{Path(args.artifact).name}")
    result = bench(Path(args.artifact), out, plan, threads=args.threads,
                   reference=args.reference if args.quality else None,
                   text=Path(args.text) if args.text else None, quality_tokens=args.quality_tokens, label=args.label)
    from edgeqwen.bench.report import markdown

    print(markdown(result))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from edgeqwen.bench.report import compare

    print(compare([Path(p) for p in args.reports], Path(args.output)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgeqwen.demo import run_demo

    return run_demo(Path(args.workdir), args.target, force=args.force)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeqwen", description="Build, verify and run Qwen models on edge devices.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("targets", help="list the target profiles")
    s.set_defaults(func=_cmd_targets)

    s = sub.add_parser("build", help="checkpoint -> verified ONNX artifact")
    s.add_argument("model", help="local Hugging Face checkpoint folder or Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct)")
    s.add_argument("--target", "-t", help="profile name or .toml path (default: the default profile)")
    s.add_argument("-o", "--output", help="artifact folder (default: <model>-<target>)")
    s.add_argument("--revision", help="Hub revision")
    s.add_argument("--no-validate", action="store_true", help="skip the comparison with transformers")
    s.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    s.set_defaults(func=_cmd_build)

    s = sub.add_parser("validate", help="compare an artifact with its transformers reference")
    s.add_argument("artifact")
    s.add_argument("--reference", required=True, help="the checkpoint the artifact was built from")
    s.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("inspect", help="print an artifact's manifest readably")
    s.add_argument("artifact")
    s.add_argument("--json", action="store_true")
    s.add_argument("--verify", action="store_true", help="also check every file's sha256")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("bench", help="speed matrix (and quality) of an artifact: report.json, report.md, plots")
    s.add_argument("artifact")
    s.add_argument("-o", "--output", help="report folder (default: bench-<artifact>)")
    s.add_argument("--prompt-lengths", default="128,512,2048")
    s.add_argument("--depths", default="0,512,2048", help="KV depths for the decode runs")
    s.add_argument("--decode-tokens", type=int, default=64)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--threads", type=int)
    s.add_argument("--label", help="name of this run in comparisons")
    s.add_argument("--quality", action="store_true", help="also perplexity and KL against --reference")
    s.add_argument("--reference", help="the checkpoint the artifact was built from")
    s.add_argument("--text", help="text file for --quality (default: held-out CPython stdlib modules)")
    s.add_argument("--quality-tokens", type=int, default=4096)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("report", help="reports across artifacts or devices")
    rsub = s.add_subparsers(dest="report_command", required=True)
    c = rsub.add_parser("compare", help="one table and plot from several report.json")
    c.add_argument("reports", nargs="+")
    c.add_argument("-o", "--output", default="bench-compare")
    c.set_defaults(func=_cmd_compare)

    from edgeqwen.runtime.cli import register as register_runtime

    register_runtime(sub)

    s = sub.add_parser("demo", help="end to end on the embedded default model: make it, build, validate, generate")
    s.add_argument("--workdir", default="edgeqwen-demo")
    s.add_argument("--target", default="cpu-int4")
    s.add_argument("--force", action="store_true", help="rebuild even if the demo artifact exists")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    # Per-tensor progress bars from onnx-ir and transformers would bury our own progress lines;
    # tqdm reads this when it is first imported, so it must be set before any heavy import.
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeQwenError as e:
        print(f"edgeqwen: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgeqwen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
