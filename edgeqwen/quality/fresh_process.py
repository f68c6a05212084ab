"""Run one function in a fresh Python process, its progress lines relayed, its result or error returned.

Validation of a large model runs its references (the parity reference, then the fp32 one for the loss) in
a process of their own, after the artifact's side. Measured on the Qwen3.5-9B shape's 4-layer cut: once an
onnxruntime session has run in a process, the layer-by-layer reference there holds ~700 MB more between
layers (1,371 MB against 676 MB in a process onnxruntime never ran in; neither MALLOC_ARENA_MAX=1 nor a
fixed mmap threshold changes it), and on the full 9B shape it grew to 5.9 GB over 32 layers where it holds
~1.1 GB alone. A fresh interpreter ("spawn", not "fork": a forked child inherits the same heap) starts
clean and hands everything back when it exits; the parent meanwhile holds only what the artifact side left.
The build of such a model also takes its rotary parameters from transformers in one (transformers and torch,
once imported, would stay resident in the build process through its validation).

The function and its arguments must be picklable (a module-level function, dataclasses, paths, arrays);
it is called with ``log=`` a callable that sends a line to the parent's ``log``. Stdlib only (and
edgeqwen.errors, which is).
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable

from edgeqwen.errors import EdgeQwenError


class ChildFailed(EdgeQwenError, RuntimeError):
    """The child process ended without a result (killed, out of memory, or an error it could not send):
    reported by the CLI as one line, as the machine running out of memory is not a bug to trace."""

    exit_code = 1


def run_fresh(fn: Callable[..., Any], *args: Any, log: Callable[[str], None] = print) -> Any:
    """``fn(*args, log=...)`` in a fresh interpreter; its exception, if any, raised here."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, args), daemon=True, name=f"edgeqwen-{fn.__name__}")
    child.start()
    send.close()  # the child holds the only writer: recv() sees EOF when it dies
    try:
        while True:
            try:
                kind, value = receive.recv()
            except EOFError:
                child.join()
                raise ChildFailed(f"the process running {fn.__name__} ended with exit code {child.exitcode} before its "
                                  "result" + (" (killed: most likely out of memory; `edgeqwen plan` shows what the "
                                              "build needs, close other programs or use a larger machine)"
                                              if child.exitcode == -9 else "")) from None
            if kind == "log":
                log(value)
            elif kind == "error":
                raise value
            else:
                return value
    finally:
        receive.close()
        child.join(timeout=30)
        if child.is_alive():  # an interrupted parent takes its child with it
            child.terminate()
            child.join()


def _child(send, fn: Callable[..., Any], args: tuple) -> None:
    try:
        result = fn(*args, log=lambda line: send.send(("log", line)))
        send.send(("result", result))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, which raises it
        try:
            send.send(("error", e))
        except Exception:  # an exception that does not pickle: its type and message
            send.send(("error", ChildFailed(f"{type(e).__name__}: {e}")))
    finally:
        send.close()
