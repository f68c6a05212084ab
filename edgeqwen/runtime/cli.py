"""``edgeqwen run`` and ``edgeqwen chat``: the runtime from a terminal. Runtime dependencies only."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from edgeqwen.argtypes import nonneg_float, nonneg_int, penalty, positive_float, positive_int, probability, unit_float
from edgeqwen.providers import NAMES as PROVIDER_NAMES
from edgeqwen.runtime.generate import Result, Stream

DIM, RESET = "\033[2m", "\033[0m"


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    # None = the model's own value, recorded in the artifact from its generation_config.json
    # (`edgeqwen inspect` shows them); each flag overrides one
    p.add_argument("--temperature", type=nonneg_float, help="0 = greedy (default: the model's)")
    p.add_argument("--top-p", type=probability, help="default: the model's")
    p.add_argument("--top-k", type=nonneg_int, help="0 = no top-k cut (default: the model's)")
    p.add_argument("--min-p", type=unit_float, help="0 = off (default: the model's)")
    p.add_argument("--repetition-penalty", type=positive_float, help="1 = off (default: the model's)")
    p.add_argument("--presence-penalty", type=penalty, help="-2..2, 0 = off (default: the model's)")
    p.add_argument("--seed", type=nonneg_int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--think", dest="think", action="store_true", default=None, help="Qwen3: thinking on")
    p.add_argument("--no-think", dest="think", action="store_false", help="Qwen3: thinking off")
    p.add_argument("--thinking-budget", type=nonneg_int, help="close </think> after this many reasoning tokens")
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: the cores this process may use)")
    p.add_argument("--provider", choices=PROVIDER_NAMES,
                   help="execution provider (default: the artifact's; CPU with a warning where it is missing)")


def options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                presence_penalty=args.presence_penalty, seed=args.seed, stop=args.stop,
                thinking_budget=args.thinking_budget)


def print_stream(stream: Stream, out=sys.stdout) -> Result:
    color = out.isatty()
    kind = None
    for d in stream:
        if d.kind != kind:
            if d.kind == "reasoning":
                out.write((DIM if color else "") + "[thinking] ")
            elif kind == "reasoning":
                out.write((RESET if color else "") + "\n[answer] ")
            kind = d.kind
        out.write(d.text)
        out.flush()
    if kind == "reasoning" and color:
        out.write(RESET)
    out.write("\n")
    return stream.result


def metrics_line(r: Result) -> str:
    m = r.metrics
    return (f"[{m.generated_tokens} tokens, {r.finish_reason}; TTFT {m.ttft_s * 1000:.0f} ms, prefill "
            f"{m.prefill_tokens_per_s:.0f} tok/s, decode {m.decode_tokens_per_s:.1f} tok/s, peak RSS {m.peak_rss_mb} MB]")


def sampling_line(engine, args: argparse.Namespace) -> str:
    """What a chat turn samples with: the model's defaults for the mode, with the flags given over them."""
    opts = {k: v for k, v in options(args).items() if k in ("temperature", "top_p", "top_k", "min_p",
                                                             "repetition_penalty", "presence_penalty")}
    p = engine.sampling_params(chat=True, think=args.think, **opts)
    given = sorted(k for k, v in opts.items() if v is not None)
    text = "greedy" if p.greedy else f"temperature {p.temperature:g}, top_p {p.top_p:g}, top_k {p.top_k}" + \
        (f", min_p {p.min_p:g}" if p.min_p else "")
    text += f", repetition_penalty {p.repetition_penalty:g}" if p.repetition_penalty != 1 else ""
    text += f", presence_penalty {p.presence_penalty:g}" if p.presence_penalty else ""
    return text + (f" (the model's defaults; {', '.join(given)} from the flags)" if given else " (the model's defaults)")


def load_engine(args: argparse.Namespace):
    """The artifact's engine; says so where a flag has no effect on it."""
    from edgeqwen.runtime import load

    engine = load(args.artifact, threads=args.threads, provider=args.provider)
    if not engine.thinking and (args.think is not None or args.thinking_budget is not None):
        flag = "--thinking-budget" if args.thinking_budget is not None else ("--think" if args.think else "--no-think")
        print(f"edgeqwen: note: {flag} ignored: this artifact's model ({engine.runtime.family}) has no thinking mode "
              "(Qwen3 has)", file=sys.stderr)
    return engine


def cmd_run(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    opts = options(args)
    if args.chat or args.think is not None:
        stream = engine.chat([{"role": "user", "content": args.prompt}], think=args.think, **opts)
    else:
        stream = engine.stream(args.prompt, **opts)
    if args.json:
        result = stream.finish()
        print(json.dumps({**result.to_dict(), "threads": engine.threads, "provider": engine.provider},
                         ensure_ascii=False, indent=2))
    else:
        result = print_stream(stream)
        print(metrics_line(result), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    session = engine.session(system=args.system, think=args.think)
    print(f"edgeqwen chat: {engine.manifest['source'].get('model_id')} ({engine.manifest['profile']['name']}, "
          f"{engine.threads} threads). /reset starts over, /exit quits.")
    print(f"sampling: {sampling_line(engine, args)}")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            session.reset()
            print("(conversation cleared)")
            continue
        result = answer(session, text, options(args))
        if result.finish_reason == "cancelled":
            print("(stopped)")
        elif args.verbose:
            print(metrics_line(result))


def answer(session, text: str, opts: dict[str, Any]) -> Result:
    """One chat turn, printed as it streams. Ctrl-C stops this answer, not the chat: from the moment
    the turn starts (prompt processing included) SIGINT only sets the turn's cancel flag, which the
    generation loop checks before every token, so the session's KV cache is never left half-updated."""
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    try:
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        return print_stream(session.send(text, cancel=cancel, **opts))
    finally:
        signal.signal(signal.SIGINT, previous)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("run", help="stream a completion (or one chat turn) from an artifact")
    s.add_argument("artifact")
    s.add_argument("prompt")
    s.add_argument("--chat", action="store_true", help="apply the chat template to the prompt")
    s.add_argument("--json", action="store_true", help="print one JSON object: text, reasoning, tokens, metrics")
    add_generation_args(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("chat", help="interactive multi-turn chat (/reset, /exit)")
    s.add_argument("artifact")
    s.add_argument("--system", help="system message")
    s.add_argument("--verbose", "-v", action="store_true", help="print timing after each answer")
    add_generation_args(s)
    s.set_defaults(func=cmd_chat)
