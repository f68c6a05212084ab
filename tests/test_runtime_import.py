"""edgeqwen.runtime must work on a device that has only the runtime dependencies."""

import subprocess
import sys
import textwrap

import pytest

BLOCKED = ["torch", "transformers", "olive", "onnx", "onnxscript", "onnx_ir", "safetensors", "huggingface_hub",
           "edgeqwen.compiler", "edgeqwen.quality", "edgeqwen.bench", "edgeqwen.testmodels", "edgeqwen.server",
           "starlette", "uvicorn", "llguidance"]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{{name}} is blocked: not a runtime dependency")
            return None

    sys.meta_path.insert(0, Block())
    import edgeqwen.runtime as rt
    engine = rt.load({folder!r})
    ids = engine.backend.greedy(engine.encode("Hello world!"), 6)
    assert len(ids) == 6, ids
    reply = engine.chat([{{"role": "user", "content": "Hi"}}], max_new_tokens=4, temperature=0.7, seed=1).finish()
    assert reply.metrics.generated_tokens >= 1
    leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    assert not leaked, leaked
    print("OK", engine.threads, ids)
    """
)


@pytest.mark.parametrize("target", ["cpu-int4", pytest.param("android-nnapi", marks=pytest.mark.slow)])  # genai, static
def test_runtime_imports_and_generates_without_compiler_packages(artifacts, target):
    folder = str(artifacts("tiny-qwen2.5", target).folder)
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=BLOCKED, folder=folder)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK")


def test_the_blocker_really_blocks():
    head = SCRIPT.format(blocked=BLOCKED, folder="unused").split("import edgeqwen")[0]
    r = subprocess.run([sys.executable, "-c", head + "import torch\n"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "torch is blocked" in r.stderr
