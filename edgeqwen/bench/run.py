"""``edgeqwen bench``: speed matrix (+ quality) for one artifact -> report.json, report.md, speed.png."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from edgeqwen.bench import report as report_mod
from edgeqwen.bench.device import device_facts
from edgeqwen.bench.speed import SpeedPlan, measure_load, run_matrix
from edgeqwen.runtime.memory import peak_rss_mb
from edgeqwen.summary import artifact_bytes


def log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _config(artifact: Path) -> dict[str, Any] | None:
    """The model's config.json (shipped in the artifact): `edgeqwen plan --device REPORT` reads the shape."""
    try:
        return json.loads((artifact / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


SAMPLE_PROMPT = "Write a Python function that checks whether a string is a palindrome."


def text_sample(engine, max_new_tokens: int = 64, seed: int = 0) -> dict[str, Any]:
    """One chat answer as a user would get it: the model's own sampling defaults (seeded, so a report
    can be regenerated), recorded with the values used."""
    from dataclasses import asdict

    r = engine.chat([{"role": "user", "content": SAMPLE_PROMPT}], max_new_tokens=max_new_tokens, seed=seed).finish()
    return {"prompt": SAMPLE_PROMPT, "text": r.text, "reasoning": r.reasoning, "finish_reason": r.finish_reason,
            "tokens": r.metrics.generated_tokens, "sampling": asdict(r.sampling) if r.sampling else None}


def bench(artifact: Path, out: Path, plan: SpeedPlan, threads: int | None = None, reference: str | None = None,
          text: Path | None = None, quality_tokens: int = 4096, label: str | None = None) -> dict[str, Any]:
    from edgeqwen.runtime import load

    log(f"== loading {artifact} ({plan.reps} times)")
    load_s = measure_load(artifact, threads, plan.reps)
    engine = load(artifact, threads=threads)
    m = engine.manifest
    log(f"== speed matrix: prefill {list(plan.prompt_lengths)}, decode {plan.decode_tokens} tokens at depths "
        f"{list(plan.depths)}, {plan.reps} reps, {engine.threads} threads")
    speed = run_matrix(engine, plan, log)
    sample = text_sample(engine)
    rss = peak_rss_mb()  # before the quality step, which loads the transformers reference
    result: dict[str, Any] = {
        "schema": report_mod.SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "label": label,
        "artifact": {"path": str(artifact), "name": Path(m["source"].get("model_id", artifact)).name,
                     "profile": m["profile"]["name"], "precision": m["profile"]["precision"],
                     "parameters": m["source"].get("parameters"), "config": _config(artifact)},
        "device": device_facts(),
        "threads": engine.threads,
        "size_bytes": artifact_bytes(m),
        "load_s": load_s,
        "speed": speed,
        "peak_rss_mb": rss,
        "sample": sample,
    }
    if reference:
        from edgeqwen.corpus import held_out_text
        from edgeqwen.quality.windows import evaluate

        body, name = (text.read_text(encoding="utf-8"), text.name) if text else held_out_text()
        log(f"== quality on {name}: perplexity and KL against {reference}")
        q = evaluate(engine, reference, body, max_tokens=quality_tokens, log=log)
        q["text"] = name
        result["quality"] = q
    files = report_mod.write(result, out, say=log)
    log("== wrote " + ", ".join(str(f) for f in files))
    return result
