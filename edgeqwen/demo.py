"""The README's main job, end to end on the embedded default model, with no network.

The default model is the small Qwen3 trained here on the CPython standard library (committed in
edgeqwen/testmodels/data/small-qwen3, regenerated bit for bit by tools/train_small_qwen.py): a real
Qwen3 architecture whose output means something. The demo builds it for a target, validates the
artifact against transformers, and completes a Python prompt with the runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROMPT = "class Parser:\n    def __init__(self, text):\n"
# Greedy with transformers' repetition penalty: a model this small loops on one line without it.
# The demo's own setting, not the model's recorded defaults (said in its output).
OPTIONS = {"max_new_tokens": 96, "temperature": 0.0, "repetition_penalty": 1.3}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _reusable(folder: Path, checkpoint: Path, target: str) -> bool:
    """An earlier demo artifact that is complete, intact and built from this checkpoint for this target."""
    from edgeqwen.artifact import load_verified, runtime_spec
    from edgeqwen.compiler.checkpoint import open_checkpoint
    from edgeqwen.errors import ArtifactError

    try:
        manifest = load_verified(folder)
        runtime_spec(manifest)  # a contract this runtime reads (an older edgeqwen's artifact is rebuilt, not reused)
    except ArtifactError:
        return False
    source = manifest.get("source", {})
    ckpt = open_checkpoint(str(checkpoint))
    return (manifest["profile"]["name"] == target and source.get("weights_sha256") == ckpt.weights_sha256()
            and source.get("config_sha256") == ckpt.config_sha256 and manifest["validation"].get("passed") is True)


def run_demo(workdir: Path, target: str, force: bool = False) -> int:
    from edgeqwen.compiler.pipeline import build
    from edgeqwen.runtime import load
    from edgeqwen.summary import format_manifest
    from edgeqwen.testmodels.trained import DEFAULT_DIR

    out = workdir / f"small-qwen3-{target}"
    if not force and _reusable(out, DEFAULT_DIR, target):
        _log(f"== reusing the verified demo artifact {out} (--force rebuilds it)")
        from edgeqwen.artifact import read_manifest

        manifest = read_manifest(out)
    else:
        _log(f"== edgeqwen build {DEFAULT_DIR} --target {target} -o {out}")
        manifest = build(str(DEFAULT_DIR), target, out, force=True).manifest
    print(format_manifest(manifest, str(out)))

    engine = load(out)
    print(f"\n== a Python completion streamed from the artifact by edgeqwen.runtime ({engine.threads} threads, "
          f"the demo's own setting: greedy, repetition penalty {OPTIONS['repetition_penalty']}, "
          f"{OPTIONS['max_new_tokens']} tokens; the model's recorded defaults: {engine.runtime.sampling.describe()})")
    print(PROMPT, end="", flush=True)
    stream = engine.stream(PROMPT, **OPTIONS)
    for delta in stream:
        print(delta.text, end="", flush=True)
    m = stream.result.metrics
    print(f"\n[{m.generated_tokens} tokens; TTFT {m.ttft_s * 1000:.0f} ms, prefill {m.prefill_tokens_per_s:.0f} tok/s, "
          f"decode {m.decode_tokens_per_s:.0f} tok/s]")
    print("(a 4.2M-parameter Qwen3 trained here in half an hour on the Python standard library: it writes Python-shaped "
          "code, not correct programs)")
    return 0
