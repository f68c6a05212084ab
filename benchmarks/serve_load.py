#!/usr/bin/env python3
"""Bounded loopback load test of `edgeqwen serve` with the official openai client.

Starts the server on 127.0.0.1 with one artifact (by default the Qwen2.5-0.5B-shaped fixture built
for cpu-int4 here), then for 1, 2, 4 and 8 concurrent streaming clients runs a fixed number of
chat requests (or stops at a time limit, whichever comes first) and reports:

  aggregate generated tokens/s over the phase, time to first token and request latency p50/p99,
  errors by status, and the server's resident memory (VmRSS) before and after all phases.

A last phase checks the limits: a second server with --requests-per-minute N answers N requests
and refuses the rest with 429 (the only errors expected anywhere).

    python benchmarks/serve_load.py [--artifact ART] [-o benchmarks/reports/serve-load]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from serving import Served  # noqa: E402  (the tests' helper: a real server process on loopback)

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a hash map works.",
           "List ten fruits and their colours.", "def fibonacci(n):", "Describe the water cycle.",
           "What is the capital of France, and why?", "Translate 'good morning' into five languages.",
           "Summarise the plot of Hamlet."]


def ensure_artifact(work: Path) -> Path:
    art = work / "qwen2.5-0.5b-shape-cpu-int4"
    if (art / "edgeqwen.json").exists():
        return art
    ckpt = work / "qwen2.5-0.5b-shape"
    if not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, str(HERE.parent / "tools" / "make_tiny_qwen.py"), "qwen2.5-0.5b-shape",
                        "-o", str(ckpt)], check=True)
    subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(ckpt), "-t", "cpu-int4", "-o", str(art),
                    "--no-validate", "-q"], check=True)
    return art


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, usage = None, None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and ttft is None:
            ttft = time.perf_counter() - t0
        if chunk.usage is not None:
            usage = chunk.usage
    return {"latency_s": time.perf_counter() - t0, "ttft_s": ttft or 0.0,
            "completion_tokens": usage.completion_tokens if usage else 0}


def phase(served: Served, model: str, clients: int, requests: int, max_tokens: int, limit_s: float) -> dict:
    import openai

    results: list[dict] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    t_end = time.perf_counter() + limit_s
    todo = iter(range(requests))

    def worker(k: int) -> None:
        client = served.client()
        while time.perf_counter() < t_end:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                r = one_request(client, model, PROMPTS[(k + i) % len(PROMPTS)], max_tokens)
                with lock:
                    results.append(r)
            except openai.APIStatusError as e:
                with lock:
                    errors[str(e.status_code)] = errors.get(str(e.status_code), 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    tokens = sum(r["completion_tokens"] for r in results)
    lat = sorted(r["latency_s"] for r in results)
    ttft = sorted(r["ttft_s"] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else 0.0

    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 2), "tokens": tokens,
            "aggregate_tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
            "ttft_p50_s": round(pct(ttft, 0.5), 3), "ttft_p99_s": round(pct(ttft, 0.99), 3),
            "latency_p50_s": round(pct(lat, 0.5), 3), "latency_p99_s": round(pct(lat, 0.99), 3),
            "errors": errors, "stopped_by_time": len(results) + sum(errors.values()) < requests}


def limits_phase(artifact: Path, rpm: int) -> dict:
    s = Served([f"m={artifact}"], "--requests-per-minute", str(rpm), "--threads", "2")
    try:
        r = phase(s, "m", 1, 2 * rpm, 2, 120)
    finally:
        s.stop()
    return {"requests_per_minute": rpm, "sent": 2 * rpm, "answered": r["requests"], "errors": r["errors"]}


def markdown(report: dict) -> str:
    lines = [f"# edgeqwen serve: loopback load test ({report['artifact_name']})", "",
             f"{report['requests_per_phase']} streaming chat requests per phase (or {report['phase_limit_s']} s), "
             f"max_tokens {report['max_tokens']}, greedy; server threads {report['threads']}, "
             f"max concurrency {report['max_concurrency']}.", "",
             "| round | clients | requests | tokens/s (aggregate) | x one client | TTFT p50 / p99 (s) | latency p50 / p99 (s) | errors |",
             "|---:|---:|---:|---:|---:|---|---|---|"]
    for p in report["phases"]:
        base = next(q["aggregate_tokens_per_s"] for q in report["phases"] if q["round"] == p["round"]) or 1
        lines.append(f"| {p['round']} | {p['clients']} | {p['requests']} | {p['aggregate_tokens_per_s']:.1f} | "
                     f"{p['aggregate_tokens_per_s'] / base:.2f} | {p['ttft_p50_s']:.3f} / {p['ttft_p99_s']:.3f} | "
                     f"{p['latency_p50_s']:.2f} / {p['latency_p99_s']:.2f} | {p['errors'] or 'none'} |")
    m = report["server_memory_mb"]
    rounds = ", ".join(f"{v['VmRSS']:.0f} MB after round {k.rsplit('_', 1)[-1]}" for k, v in m.items()
                       if k.startswith("after_round_"))
    lines += ["", f"Server RSS: {m['before']['VmRSS']:.0f} MB after loading, {m['warm']['VmRSS']:.0f} MB after the "
              f"warm-up, {rounds} (peak {m['after']['VmHWM']:.0f} MB).",
              f"Sequences per batched graph run, mean over the whole run: {report['mean_rows_per_batched_step']}.",
              f"Limits: {report['limits']['answered']} of {report['limits']['sent']} answered at "
              f"{report['limits']['requests_per_minute']} requests/minute; refused: {report['limits']['errors']}."]
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install 'edgeqwen[bench]')", file=sys.stderr)
        return
    ph = [p for p in report["phases"] if p["round"] == report["phases"][-1]["round"]]
    x = [p["clients"] for p in ph]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [p["aggregate_tokens_per_s"] for p in ph], "o-")
    a.set_xlabel("concurrent streaming clients")
    a.set_ylabel("aggregate tokens/s")
    a.set_ylim(bottom=0)  # ratios read true from the bars' heights
    a.set_xticks(x)
    a.grid(alpha=0.3)
    b.plot(x, [p["ttft_p50_s"] for p in ph], "o-", label="TTFT p50")
    b.plot(x, [p["latency_p50_s"] for p in ph], "s-", label="latency p50")
    b.plot(x, [p["latency_p99_s"] for p in ph], "^--", label="latency p99")
    b.set_xlabel("concurrent streaming clients")
    b.set_ylabel("seconds")
    b.set_xticks(x)
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle(f"edgeqwen serve, {report['artifact_name']}")
    fig.tight_layout()
    fig.savefig(out / "serve_load.png", dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="default: build the qwen2.5-0.5b-shape fixture for cpu-int4")
    p.add_argument("--work", type=Path, default=Path("bench-work"), help="where the default artifact is built")
    p.add_argument("--clients", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=16, help="requests per phase")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--phase-limit", type=float, default=300.0, help="seconds; a phase stops here at the latest")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rpm", type=int, default=5, help="requests per minute of the limits phase")
    p.add_argument("--rounds", type=int, default=2, help="times the whole list of phases runs")
    p.add_argument("-o", "--output", type=Path, default=Path("benchmarks/reports/serve-load"))
    args = p.parse_args()
    artifact = args.artifact or ensure_artifact(args.work)
    clients = [int(c) for c in args.clients.split(",")]
    served = Served([f"m={artifact}"], "--threads", str(args.threads), "--max-concurrency", str(max(clients)),
                    "--max-queue", str(max(clients)))
    try:
        memory = {"before": rss_mb(served.proc.pid)}
        # warm-up at the highest concurrency: the KV batch grows to its largest slot count here, so any
        # growth after it would be a leak, not a first-use allocation
        phase(served, "m", max(clients), max(clients), args.max_tokens, args.phase_limit)
        memory["warm"] = rss_mb(served.proc.pid)
        phases = []
        for round_ in range(1, args.rounds + 1):  # a second round shows whether memory keeps growing
            for c in clients:
                r = {"round": round_, **phase(served, "m", c, args.requests, args.max_tokens, args.phase_limit)}
                print(json.dumps(r), file=sys.stderr)
                phases.append(r)
            memory[f"after_round_{round_}"] = rss_mb(served.proc.pid)
        memory["after"] = rss_mb(served.proc.pid)
        metrics = served.get("/metrics")[1].decode()
        rows = [float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("edgeqwen_batch_rows_per_step")]
    finally:
        served.stop()
    report = {"artifact": str(artifact), "artifact_name": artifact.name, "requests_per_phase": args.requests,
              "phase_limit_s": args.phase_limit, "max_tokens": args.max_tokens, "threads": args.threads,
              "max_concurrency": max(clients), "phases": phases, "server_memory_mb": memory,
              "mean_rows_per_batched_step": rows[0] if rows else None,
              "limits": limits_phase(artifact, args.rpm)}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "report.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.output / "report.md").write_text(md)
    plot(report, args.output)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
