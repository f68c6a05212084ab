"""The ``edgeqwen`` console script. Each subcommand imports its heavy modules only when it runs, and
checks first that the extra it needs is installed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

from edgeqwen.argtypes import byte_size, int_list, positive_float, positive_int
from edgeqwen.errors import EdgeQwenError, ProfileError, ValidationFailed
from edgeqwen.extras import require


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgeqwen.targets import list_profiles, targets_dir

    profiles = list_profiles()
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        mark = " (default)" if p.default else ""
        print(f"{p.name:<{width}}  {p.precision:<9} {p.description}{mark}")
    if args.verbose:
        print(f"(profiles read from {targets_dir()})")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    require("build", "edgeqwen build")
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.summary import format_manifest
    from edgeqwen.targets import default_profile_name

    target = args.target or default_profile_name()
    result = build(args.model, target, Path(args.output) if args.output else None, validate=not args.no_validate,
                   force=args.force, revision=args.revision, quiet=args.quiet, adapter=args.adapter,
                   adapter_scale=args.adapter_scale, exporter=args.exporter, max_kl=args.max_kl, wait=args.wait,
                   loss_text=not args.no_loss_text)
    print(format_manifest(result.manifest, str(result.folder)))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    require("build", "edgeqwen validate")
    from edgeqwen.artifact import load_verified
    from edgeqwen.compiler.checkpoint import open_checkpoint
    from edgeqwen.quality.validation import validate_apart
    from edgeqwen.runtime.engine import Engine
    from edgeqwen.summary import reference_mismatch, validation_lines
    from edgeqwen.targets import TargetProfile

    manifest = load_verified(Path(args.artifact))  # every file against its hash, once
    ckpt = open_checkpoint(args.reference)  # a missing or broken reference is a one-line error
    described = ckpt.describe()
    for line in reference_mismatch(manifest.get("source", {}), described):
        print(f"edgeqwen: note: {line}", file=sys.stderr)
    built, ref_vocab = manifest.get("source", {}).get("vocab_size"), described.get("vocab_size")
    if built and ref_vocab and built != ref_vocab:  # logits of different widths cannot be compared token by token
        raise ValidationFailed(f"the reference's vocabulary has {ref_vocab:,} tokens, the artifact's {built:,}: "
                               "pass the checkpoint the artifact was built from as --reference")
    profile = TargetProfile.from_dict(manifest["profile"], f"{args.artifact} manifest")
    if args.no_loss_text and profile.quality.max_kl_mean is not None:
        raise ProfileError(f"profile {profile.name} bounds the quantisation loss (its [quality] table), which "
                           "--no-loss-text skips; drop --no-loss-text")
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="edgeqwen-validate-") as tmp:
        reference = _reference_with_adapter(manifest, ckpt, args.adapter, Path(tmp))
        result = validate_apart(lambda: Engine(args.artifact, verify="size"), reference, ckpt.parameter_count,
                                profile.validation, log=log, quality=profile.quality,
                                loss_text=not args.no_loss_text)
    record = result.to_dict()
    print(json.dumps(record, indent=2) if args.json else "\n".join(validation_lines(record)))
    return 0 if result.passed else 3


def _reference_with_adapter(manifest: dict, ckpt, adapter: str | None, tmp: Path) -> Path:
    """The checkpoint the artifact's weights came from: the base, or the base with its LoRA merged."""
    from edgeqwen.compiler.adapter import merge, open_adapter

    recorded = manifest.get("adapter")
    if recorded is None:
        if adapter:
            raise EdgeQwenError("this artifact was built without an adapter; drop --adapter")
        return ckpt.path
    if not adapter:
        raise EdgeQwenError(f"this artifact has a LoRA adapter merged in (sha256 {recorded['sha256'][:12]}, built from "
                            f"{recorded['path']}): pass it with --adapter DIR")
    lora = open_adapter(adapter, recorded.get("user_scale", 1.0))
    if lora.sha256 != recorded["sha256"]:
        raise EdgeQwenError(f"adapter {adapter} (sha256 {lora.sha256[:12]}) is not the one merged into this artifact "
                            f"(sha256 {recorded['sha256'][:12]})")
    return merge(ckpt.path, list(ckpt.weight_files), lora, tmp / "merged")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edgeqwen.artifact import load_verified, read_manifest
    from edgeqwen.summary import format_manifest, human_bytes

    manifest = load_verified(Path(args.artifact)) if args.verify else read_manifest(Path(args.artifact))
    print(json.dumps(manifest, indent=2) if args.json else format_manifest(manifest, args.artifact))
    if args.verify:
        files = manifest["files"]
        size = human_bytes(sum(f["bytes"] for f in files.values()))
        print(f"verified: all {len(files)} files ({size}) match the sizes and sha256 in the manifest",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgeqwen.bench.run import bench
    from edgeqwen.bench.speed import SpeedPlan

    if args.quality and not args.reference:
        raise EdgeQwenError("--quality needs --reference MODEL (the checkpoint the artifact was built from)")
    if args.quality:
        require("build", "edgeqwen bench --quality (the transformers reference)")
    plan = SpeedPlan(prompt_lengths=args.prompt_lengths, depths=args.depths, decode_tokens=args.decode_tokens,
                     reps=args.reps)
    out = Path(args.output or f"bench-{Path(args.artifact).name}")
    result = bench(Path(args.artifact), out, plan, threads=args.threads,
                   reference=args.reference if args.quality else None,
                   text=Path(args.text) if args.text else None, quality_tokens=args.quality_tokens, label=args.label)
    from edgeqwen.bench.report import markdown

    print(markdown(result))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from edgeqwen.bench.report import compare

    print(compare([Path(p) for p in args.reports], Path(args.output),
                  say=lambda s: print(f"edgeqwen: note: {s}", file=sys.stderr)))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from edgeqwen.plan.model import builtin_calibration
    from edgeqwen.plan.recommend import plan, report_device, this_device
    from edgeqwen.plan.table import explain, render

    cal = builtin_calibration()
    device = this_device(cal, args.ram) if args.device == "this" else report_device(cal, Path(args.device), args.ram)
    result = plan(cal, device, args.context, args.task, args.min_tokens_per_s, args.target, args.prompt_tokens)
    if args.json:
        if args.explain:
            result["calibration"] = cal.to_dict()
        print(json.dumps(result, indent=2))
        return 0
    print(render(result, limit=args.limit))
    if args.explain:
        print("\n" + explain(cal, device.how))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    require("build", "edgeqwen demo")
    from edgeqwen.demo import run_demo

    return run_demo(Path(args.workdir), args.target, force=args.force)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeqwen", description="Build, verify and run Qwen models on edge devices.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("targets", help="list the target profiles")
    s.add_argument("--verbose", "-v", action="store_true", help="also say which folder they come from")
    s.set_defaults(func=_cmd_targets)

    s = sub.add_parser("build", help="checkpoint -> verified ONNX artifact (needs the [build] extra)")
    s.add_argument("model", help="local Hugging Face checkpoint folder or Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct)")
    s.add_argument("--target", "-t", help="profile name or .toml path (default: the default profile)")
    s.add_argument("-o", "--output", help="artifact folder (default: <model>-<target>)")
    s.add_argument("--revision", help="Hub revision")
    s.add_argument("--adapter", help="peft LoRA adapter folder to merge into the weights before quantisation")
    s.add_argument("--adapter-scale", type=positive_float, default=1.0, help="multiplies the adapter's scaling")
    s.add_argument("--exporter", choices=("streaming", "olive"), default="streaming",
                   help="genai graphs: streaming (default; memory bounded by one tensor, any model size) or olive "
                        "(Olive's ModelBuilder and quantisation passes; about 10 bytes of RAM per parameter)")
    s.add_argument("--max-kl", type=positive_float, help="refuse the build if quantisation costs more than this KL "
                                                         "(mean nats per token) against the fp32 checkpoint")
    s.add_argument("--no-validate", action="store_true", help="skip the comparison with transformers")
    s.add_argument("--no-loss-text", action="store_true",
                   help="validate parity only: skip the quantisation loss on the built-in text (recorded as skipped)")
    s.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    s.add_argument("--wait", action="store_true",
                   help="if another build is writing the same output folder, start after it instead of refusing")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    s.set_defaults(func=_cmd_build)

    s = sub.add_parser("validate", help="compare an artifact with its transformers reference (needs [build])")
    s.add_argument("artifact")
    s.add_argument("--reference", required=True, help="the checkpoint the artifact was built from")
    s.add_argument("--adapter", help="the LoRA adapter folder merged into it at build, if any")
    s.add_argument("--no-loss-text", action="store_true",
                   help="parity only: skip the quantisation loss on the built-in text (recorded as skipped)")
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
    s.add_argument("--prompt-lengths", type=int_list(1), default=(128, 512, 2048), help="default 128,512,2048")
    s.add_argument("--depths", type=int_list(0), default=(0, 512, 2048),
                   help="KV depths for the decode runs (default 0,512,2048)")
    s.add_argument("--decode-tokens", type=positive_int, default=64)
    s.add_argument("--reps", type=positive_int, default=3)
    s.add_argument("--threads", type=positive_int)
    s.add_argument("--label", help="name of this run in comparisons")
    s.add_argument("--quality", action="store_true", help="also perplexity and KL against --reference (needs [build])")
    s.add_argument("--reference", help="the checkpoint the artifact was built from")
    s.add_argument("--text", help="text file for --quality (default: held-out CPython stdlib modules)")
    s.add_argument("--quality-tokens", type=positive_int, default=4096)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("report", help="reports across artifacts or devices")
    rsub = s.add_subparsers(dest="report_command", required=True)
    c = rsub.add_parser("compare", help="one table and plot from several bench reports")
    c.add_argument("reports", nargs="+", help="report.json files or the folders `edgeqwen bench -o` wrote")
    c.add_argument("-o", "--output", default="bench-compare")
    c.set_defaults(func=_cmd_compare)

    s = sub.add_parser("plan", help="which Qwen model and profile fit a device: size, memory, speed (estimated from "
                                    "measurements)")
    s.add_argument("--ram", type=byte_size, help="memory the app may use, e.g. 8G (default: the device's RAM)")
    s.add_argument("--context", type=positive_int, default=4096, help="tokens of context to hold (default 4096)")
    from edgeqwen.plan.catalogue import TASKS

    s.add_argument("--task", choices=TASKS, help="only models meant for this (Coder for code, Math for maths, "
                                                 "Qwen3 for reasoning)")
    s.add_argument("--min-tokens-per-s", type=positive_float, default=5.0,
                   help="slowest decode to accept (default 5, about reading speed)")
    s.add_argument("--device", default="this", help="'this' (probe this machine) or the report.json of "
                                                    "`edgeqwen bench` run on the device")
    s.add_argument("--target", "-t", action="append", help="only these profiles (repeat); default: every genai "
                                                          "profile for the device")
    s.add_argument("--prompt-tokens", type=positive_int, default=512, help="prompt length for the prefill figure")
    s.add_argument("--limit", type=positive_int, default=15, help="rows of the table (--json lists all)")
    s.add_argument("--explain", action="store_true", help="also how the figures are made and their measured error")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_plan)

    from edgeqwen.runtime.cli import register as register_runtime

    register_runtime(sub)

    from edgeqwen.server.cli import register as register_server

    register_server(sub)

    s = sub.add_parser("demo", help="end to end on the embedded default model: build, validate, generate (needs [build])")
    s.add_argument("--workdir", default="edgeqwen-demo")
    s.add_argument("--target", default="cpu-int4")
    s.add_argument("--force", action="store_true", help="rebuild the demo artifact even if a verified one exists")
    s.set_defaults(func=_cmd_demo)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach a person as one line: no file name, line number or source line."""
    print(f"edgeqwen: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # Per-tensor progress bars from onnx-ir and transformers would bury our own progress lines;
    # tqdm reads this when it is first imported, so it must be set before any heavy import.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # transformers' warnings are about its own kernels and APIs (e.g. "install flash-linear-attention", a CUDA
    # package, for every Qwen3.5 layer built on a CPU): not the user's to act on; an explicit setting wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.showwarning = _one_line_warning
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, inside the handler below
        return code
    except EdgeQwenError as e:
        print(f"edgeqwen: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgeqwen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`edgeqwen inspect --json | head`): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
