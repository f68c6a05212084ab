"""onnxruntime-genai as a peer: its own model builder's default int4 CPU model, run the way its README shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build_default(checkpoint: Path, out: Path) -> Path:
    """``python -m onnxruntime_genai.models.builder -i CKPT -o OUT -p int4 -e cpu`` (cached in ``out``)."""
    if (out / "genai_config.json").is_file():
        return out
    print(f"== onnxruntime-genai builder: -i {checkpoint} -o {out} -p int4 -e cpu", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
                    "-p", "int4", "-e", "cpu", "-c", str(out.parent / "genai-cache")], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
    return out


class GenaiReadme:
    """The README's loop (append_tokens, generate_next_token) with default options; threads are
    genai's default unless given (the peer comparison runs every engine on the same threads)."""

    name = "onnxruntime-genai default"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import json

        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.threads = threads or "genai default"
        self.size_bytes = sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        """(prefill tok/s, decode tok/s, generated ids) for one greedy generation."""
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        t1 = time.perf_counter()
        out: list[int] = []
        while not gen.is_done() and len(out) < new_tokens:
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        t2 = time.perf_counter()
        # append_tokens computed the first token's logits; the first generate_next_token only picks
        # from them, each later one runs a decode step
        return len(ids) / (t1 - t0), (len(out) - 1) / (t2 - t1), out

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), V] logits, one token at a time through the KV cache (the graph gives the last position)."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        gen = self.og.Generator(self.model, params)
        rows = []
        for t in ids:
            gen.append_tokens(np.asarray([t], dtype=np.int32))
            logits = np.asarray(gen.get_logits(), dtype=np.float32)
            rows.append(logits.reshape(-1, logits.shape[-1])[-1])
        return np.stack(rows)

