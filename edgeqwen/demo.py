"""The README's main job, end to end on the embedded default model, with no network.

Makes the default checkpoint locally (Qwen2.5 architecture, real Qwen vocabulary and chat template,
random weights), builds it for a target, validates it against transformers, and generates from the
artifact with the runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_FIXTURE = "tiny-qwen2.5"


def run_demo(workdir: Path, target: str, force: bool = False) -> int:
    from edgeqwen.build.fixtures import make_checkpoint
    from edgeqwen.build.pipeline import build
    from edgeqwen.inspect import format_manifest
    from edgeqwen.runtime import load

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / f"{DEFAULT_FIXTURE}-checkpoint"
    if not (ckpt / "config.json").is_file():
        print(f"== making the default checkpoint {DEFAULT_FIXTURE} in {ckpt}", file=sys.stderr)
        make_checkpoint(DEFAULT_FIXTURE, ckpt)
    out = workdir / f"{DEFAULT_FIXTURE}-{target}"
    print(f"== edgeqwen build {ckpt} --target {target} -o {out}", file=sys.stderr)
    result = build(str(ckpt), target, out, force=True)
    print(format_manifest(result.manifest, str(result.folder)))

    engine = load(out)
    question = "What is the capital of France?"
    print(f"\n== chat turn streamed from the artifact by edgeqwen.runtime ({engine.threads} threads)")
    print(f"user> {question}\nassistant> ", end="", flush=True)
    stream = engine.chat([{"role": "user", "content": question}], max_new_tokens=32)
    for delta in stream:
        print(delta.text, end="", flush=True)
    m = stream.result.metrics
    print(f"\n[{m.generated_tokens} tokens; TTFT {m.ttft_s * 1000:.0f} ms, prefill {m.prefill_tokens_per_s:.0f} tok/s, "
          f"decode {m.decode_tokens_per_s:.0f} tok/s]")
    print("(random weights: the text is noise; the validation above is what proves the artifact right)")
    return 0
