#!/usr/bin/env python3
"""Time to first token, turn by turn, of a conversation whose history is resent every turn.

A 6-turn chat (about 300 tokens per user message, short answers) runs three ways:
  session  the embedded runtime's ChatSession (what `edgeqwen chat` uses)
  serve    `edgeqwen serve` on loopback, the official openai client resending the whole history
  llama    llama.cpp (llama-cpp-python, if installed) with a GGUF of the same checkpoint, resending it too
and in two histories:
  appended  each answer is sent back as it was generated
  changed   each answer comes back as "ok" (a client that edits or trims; Qwen3 templates that drop
            earlier thinking do the same to the tokens)
The figure is TTFT of turn 6 / turn 1: flat (near 1) when only the new part is prefilled, growing with
the conversation when the whole history is processed again.

    python benchmarks/multiturn.py [--artifact ART] [--gguf FILE.gguf] [-o benchmarks/reports/multiturn]

Without --artifact it builds the Qwen2.5-0.5B-shaped fixture for cpu-int4-fast into benchmarks/.cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from serving import Served  # noqa: E402  (the tests' helper: a real server process on loopback)

TURNS, WORDS_PER_TURN, ANSWER_TOKENS = 6, 220, 24  # ~220 words of code and prose: ~300 tokens


def user_messages(turns: int, words: int) -> list[str]:
    """Deterministic user turns from the local held-out text (no network)."""
    from edgeqwen.corpus import held_out_text

    text = held_out_text()[0].split()
    return [f"Turn {i + 1}. Read this and say what it does:\n" + " ".join(text[i * words:(i + 1) * words])
            for i in range(turns)]


def ensure_artifact(work: Path) -> Path:
    art = work / "qwen2.5-0.5b-shape-cpu-int4-fast"
    if (art / "edgeqwen.json").exists():
        return art
    ckpt = work / "qwen2.5-0.5b-shape"
    if not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, str(HERE.parent / "tools" / "make_tiny_qwen.py"), "qwen2.5-0.5b-shape",
                        "-o", str(ckpt)], check=True)
    subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", str(ckpt), "-t", "cpu-int4-fast", "-o", str(art),
                    "--no-validate", "-q"], check=True)
    return art


def run_session(artifact: Path, users: list[str], changed: bool, threads: int) -> list[dict]:
    from edgeqwen.runtime import load

    engine = load(artifact, threads=threads, backend="batched")
    session = engine.session(system="Be brief.")
    out = []
    for text in users:
        r = session.send(text, max_new_tokens=ANSWER_TOKENS, temperature=0).finish()
        out.append({"ttft_s": r.metrics.ttft_s, "cached_tokens": r.metrics.cached_tokens,
                    "fed_tokens": r.metrics.prompt_tokens})
        if changed:  # the client sends the answer back edited: the session sees a different history
            session.messages[-1] = {"role": "assistant", "content": "ok"}
    session.close()
    return out


def run_serve(artifact: Path, users: list[str], changed: bool, threads: int) -> list[dict]:
    s = Served([f"m={artifact}"], "--threads", str(threads))
    try:
        c = s.client()
        msgs = [{"role": "system", "content": "Be brief."}]
        out = []
        for text in users:
            msgs.append({"role": "user", "content": text})
            t0, ttft, usage, answer = time.perf_counter(), None, None, []
            for chunk in c.chat.completions.create(model="m", messages=msgs, max_tokens=ANSWER_TOKENS, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}):
                delta = chunk.choices[0].delta if chunk.choices else None
                text_piece = (delta.content or getattr(delta, "reasoning_content", None)) if delta else None
                if text_piece and ttft is None:  # the first generated text (the role chunk comes before it)
                    ttft = time.perf_counter() - t0
                if delta is not None and delta.content:
                    answer.append(delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
            msgs.append({"role": "assistant", "content": "ok" if changed else "".join(answer)})
            out.append({"ttft_s": ttft or 0.0, "prompt_tokens": usage.prompt_tokens,
                        "cached_tokens": usage.prompt_tokens_details.cached_tokens})
        return out
    finally:
        s.stop()


def run_llama(gguf: Path, users: list[str], changed: bool, threads: int) -> list[dict]:
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=8192, n_threads=threads, verbose=False)
    msgs = [{"role": "system", "content": "Be brief."}]
    out = []
    for text in users:
        msgs.append({"role": "user", "content": text})
        t0, ttft, answer = time.perf_counter(), None, []
        for chunk in llm.create_chat_completion(msgs, max_tokens=ANSWER_TOKENS, temperature=0, stream=True):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece and ttft is None:
                ttft = time.perf_counter() - t0
            answer.append(piece or "")
        msgs.append({"role": "assistant", "content": "ok" if changed else "".join(answer)})
        out.append({"ttft_s": ttft or 0.0})
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def markdown(report: dict) -> str:
    lines = [f"# Multi-turn time to first token ({report['cpu']}, {report['threads']} threads)", "",
             f"{report['turns']} turns, user messages of ~{report['user_tokens']} tokens, answers of "
             f"{ANSWER_TOKENS} tokens; artifact `{report['artifact']}`", "",
             "| engine | history | " + " | ".join(f"turn {i + 1}" for i in range(report["turns"])) +
             " | turn 6 / turn 1 | cached tokens, last turn |",
             "|---|---|" + "---|" * report["turns"] + "---|---|"]
    for row in report["rows"]:
        t = [r["ttft_s"] for r in row["turns"]]
        cached = row["turns"][-1].get("cached_tokens", "")
        lines.append(f"| {row['engine']} | {row['history']} | " + " | ".join(f"{x:.2f} s" for x in t) +
                     f" | {t[-1] / t[0]:.2f}x | {cached} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--gguf", type=Path, help="llama.cpp peer (needs llama-cpp-python: tools/install_llama_cpp_python.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--turns", type=int, default=TURNS)
    ap.add_argument("--engines", default="session,serve,llama")
    ap.add_argument("-o", "--output", type=Path, default=HERE / "reports" / "multiturn")
    a = ap.parse_args()
    artifact = a.artifact or ensure_artifact(HERE / ".cache")
    users = user_messages(a.turns, WORDS_PER_TURN)
    from edgeqwen.runtime import load

    user_tokens = sum(len(load(artifact, verify="size").encode(u)) for u in users) // len(users)
    runners = {"session": lambda ch: run_session(artifact, users, ch, a.threads),
               "serve": lambda ch: run_serve(artifact, users, ch, a.threads)}
    if a.gguf:
        runners["llama"] = lambda ch: run_llama(a.gguf, users, ch, a.threads)
    rows = []
    for engine in [e for e in a.engines.split(",") if e in runners]:
        for history in ("appended", "changed"):
            turns = runners[engine](history == "changed")
            rows.append({"engine": engine, "history": history, "turns": turns})
            t = [r["ttft_s"] for r in turns]
            print(f"{engine:8s} {history:9s} " + " ".join(f"{x:6.2f}" for x in t) + f"   6/1 = {t[-1] / t[0]:.2f}x",
                  flush=True)
    report = {"cpu": cpu_name(), "threads": a.threads, "turns": a.turns, "user_tokens": user_tokens,
              "artifact": str(artifact), "rows": rows}
    a.output.mkdir(parents=True, exist_ok=True)
    (a.output / "report.json").write_text(json.dumps(report, indent=2))
    (a.output / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
