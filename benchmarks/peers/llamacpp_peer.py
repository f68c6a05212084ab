"""llama.cpp as a peer, through llama-cpp-python, with GGUF files made by llama.cpp's own converter.

The converter ships inside the llama-cpp-python source distribution (vendor/llama.cpp); it is taken
from there at run time (pip download from PyPI into benchmarks/.cache), never copied into this repo.
Build llama-cpp-python without AMX (this sandbox faults on AMX tile instructions), for example:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF \
      -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install --no-binary llama-cpp-python llama-cpp-python
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

# llama.cpp's ftype numbers (enum llama_ftype)
FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}

# Run inside the converter's process: our fixtures and the trained model use Qwen2's pre-tokenizer
# regex (digits one by one); a vocabulary llama.cpp does not know by hash is declared as "qwen2".
_CONVERT = """
import sys
src = sys.argv.pop(1)
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base
_orig = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        return "qwen2"
base.TextModel.get_vocab_base_pre = _pre
sys.argv[0] = src + "/convert_hf_to_gguf.py"
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def available() -> str | None:
    """None if llama-cpp-python can be used, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or a library that does not load
        return f"llama-cpp-python is not importable ({type(e).__name__}: {e})"
    return None


def converter_source(cache: Path) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist (downloaded once from PyPI)."""
    version = metadata.version("llama-cpp-python")
    dest = cache / f"llama.cpp-{version}"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache),
                    f"llama-cpp-python=={version}"], check=True, stdout=subprocess.DEVNULL)
    sdist = next(cache.glob(f"llama_cpp_python-{version}.tar.gz"))
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (
            m.name == prefix + "convert_hf_to_gguf.py" or m.name.startswith(prefix + "conversion/")
            or m.name.startswith(prefix + "gguf-py/"))]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(dest, members=members, filter="data")
    return dest


def convert(checkpoint: Path, out: Path, src: Path, outtype: str = "f32") -> Path:
    if out.is_file():
        return out
    # A Qwen3.5 saved by transformers (text only, or trained here) has no mtp.* tensors, which the converter
    # expects of every Qwen3.5 unless told --no-mtp
    extra = [] if _has_mtp_tensors(checkpoint) or not _is_qwen35(checkpoint) else ["--no-mtp"]
    print(f"== llama.cpp convert_hf_to_gguf.py {checkpoint} --outtype {outtype} {' '.join(extra)}", file=sys.stderr,
          flush=True)
    subprocess.run([sys.executable, "-c", _CONVERT, str(src), str(checkpoint), "--outfile", str(out),
                    "--outtype", outtype, *extra], check=True, stdout=subprocess.DEVNULL)
    return out


def _is_qwen35(checkpoint: Path) -> bool:
    from edgeqwen.model.spec import read_spec

    return read_spec(checkpoint).family == "qwen3_5"


def _has_mtp_tensors(checkpoint: Path) -> bool:
    from edgeqwen.safetensors_io import CheckpointTensors

    files = sorted(p.name for p in checkpoint.glob("*.safetensors"))
    with CheckpointTensors(checkpoint, files) as src:
        return any(n.startswith("mtp.") for n in src.where)


def quantize(src: Path, out: Path, kind: str, threads: int) -> Path:
    if out.is_file():
        return out
    import llama_cpp

    print(f"== llama.cpp quantize {src.name} -> {kind}", file=sys.stderr, flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({kind}) returned {rc}")
    return out


class LlamaCpp:
    def __init__(self, gguf: Path, kind: str, threads: int, n_ctx: int = 4096, logits_all: bool = False) -> None:
        from llama_cpp import Llama

        self.name = f"llama.cpp {kind}"
        self.size_bytes = gguf.stat().st_size  # one file: weights, vocabulary and template
        self.threads = threads
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                         logits_all=logits_all, verbose=False)

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        out = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
        for _ in range(new_tokens - 1):
            llm.eval([out[-1]])
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        t2 = time.perf_counter()
        return len(ids) / (t1 - t0), (new_tokens - 1) / (t2 - t1), out

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), V] logits for every position (needs logits_all=True)."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)
