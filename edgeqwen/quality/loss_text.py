"""What quantisation cost, measured on a built-in text of a few thousand tokens.

The parity prompts (validation.PROMPTS) are short on purpose: they prove the compiler. The loss is a
property of the quantised weights and needs more tokens to be a stable figure, in the languages users
ship: an English story, a Chinese one, a Python module and a chat turn (system, user and the
assistant's answer, rendered by the checkpoint's own template). About 2,700 tokens with the Qwen
vocabulary; all written for this file, so no model here was trained or calibrated on them.

Memory stays bounded by a chunk of logits on each side (151,936-way logits of the whole text would be
1.6 GB): the artifact scores a text token by token in one sequence (its first token, then each next one as a
decode step), its rows staged a chunk at a time and written to a float32 file on disk; the reference then
scores a chunk at a time (``logits_chunks``), reading the artifact's rows for it back, and only per-token
numbers are kept. A chunk is at most ``CHUNK`` positions and ``BUFFER_BYTES`` of logits (``chunk_rows``), on
both sides.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeqwen.quality.metrics import per_token, summarize

CHUNK = 512  # positions per chunk at most
# A chunk's logits take at most this many bytes on each side: 220 rows at Qwen2/3's 151,936-way vocabulary,
# 135 at Qwen3.5's 248,320 (512 rows would be 508 MB there, and the reference side holds its chunk, the
# artifact's rows for it and one block of the output matrix at once, beside what the large model's
# validation already holds). Smaller chunks cost a little more on the reference side (the layered reference
# reads the output matrix once more per chunk); on the artifact's they only stage fewer rows per write.
BUFFER_BYTES = 128 << 20
TEXT_FILES = (("english", "english.txt"), ("chinese", "chinese.txt"), ("code", "code.py.txt"))
CHAT_FILE = "chat.json"


def _data(name: str) -> str:
    return resources.files("edgeqwen.quality").joinpath("data", "loss", name).read_text(encoding="utf-8")


def loss_sequences(tokenizer, limit: int) -> list[tuple[str, list[int]]]:
    """(name, ids) of each built-in text, cut to ``limit`` tokens (the artifact's context)."""
    texts = [(name, _data(file)) for name, file in TEXT_FILES]
    kwargs = {"enable_thinking": False} if "enable_thinking" in (tokenizer.chat_template or "") else {}
    messages = json.loads(_data(CHAT_FILE))
    texts.append(("chat", tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)))
    return [(name, tokenizer(text, add_special_tokens=False).input_ids[:limit]) for name, text in texts]


def chunk_rows(vocab: int) -> int:
    """Positions per chunk for ``vocab``-way logits: CHUNK, fewer when that would pass BUFFER_BYTES."""
    return max(16, min(CHUNK, BUFFER_BYTES // (4 * vocab)))


def chunks(length: int, size: int = CHUNK) -> list[tuple[int, int]]:
    """[a, b) ranges of scored positions: position p's logits predict token p + 1, so 0 .. length - 2."""
    return [(a, min(a + size, length - 1)) for a in range(0, length - 1, size)]


@dataclass
class ArtifactLogits:
    """The artifact's logits for every scored position of every text, in one float32 file."""

    path: Path
    offsets: dict[str, int]  # first row of each text
    sequences: list[tuple[str, list[int]]]
    vocab: int

    def rows(self, name: str, a: int, b: int) -> np.ndarray:
        """[b - a, V] rows of text ``name``, read from the file (never mapped: mapped pages count in RSS)."""
        first = self.offsets[name] + a
        flat = np.fromfile(self.path, dtype=np.float32, count=(b - a) * self.vocab, offset=first * self.vocab * 4)
        return flat.reshape(b - a, self.vocab)

    @property
    def tokens(self) -> int:
        return sum(len(ids) - 1 for _, ids in self.sequences)


def run_artifact_loss(engine, sequences: list[tuple[str, list[int]]], folder: Path,
                      log: Callable[[str], None] = print) -> ArtifactLogits:
    """Score the built-in texts (``sequences``: loss_sequences' (name, ids), cut here to the artifact's
    context) with ``engine``; the logits go to ``folder``/loss-logits.f32."""
    limit = engine.context_length - 1
    art = ArtifactLogits(folder / "loss-logits.f32", {}, [(name, ids[:limit]) for name, ids in sequences],
                         engine.backend.vocab_size)
    row, t0 = 0, time.perf_counter()
    size = chunk_rows(engine.backend.vocab_size)
    buffer = np.empty((size, engine.backend.vocab_size), dtype=np.float32)  # one [size, V] for every chunk
    with open(art.path, "wb") as out:  # rows in order: text by text, chunk by chunk
        for name, ids in art.sequences:
            art.offsets[name] = row
            _score(engine.backend, ids, buffer, lambda rows: out.write(memoryview(rows)))  # no bytes copy
            row += len(ids) - 1
            elapsed = time.perf_counter() - t0
            log(f"    loss text {name}: {row} of {art.tokens} tokens scored by the artifact, {elapsed:.0f} s "
                f"elapsed, ~{elapsed / row * (art.tokens - row):.0f} s left")
    return art


def _score(backend, ids: list[int], buffer: np.ndarray, write: Callable[[np.ndarray], Any]) -> None:
    """The logits after ids[:1], ids[:2], ... ids[:-1] (predicting ids[1:]), one sequence fed a token at a
    time, staged in ``buffer`` [rows, V] and handed to ``write`` a full buffer at a time. No context is
    prefilled twice, and no prefill's activations (a chunk of the context at once) come beside the session:
    on the Qwen3.5-0.8B shape, re-prefilling each chunk's context grew the artifact side by ~140 MB beyond
    the staging buffer."""
    state = backend.new_state(len(ids))
    try:
        n = 0
        for t in ids[:-1]:
            buffer[n] = state.append([t])
            n += 1
            if n == len(buffer):
                write(buffer)
                n = 0
        if n:
            write(buffer[:n])
    finally:
        state.close()


def compare_loss(reference, art: ArtifactLogits) -> dict[str, Any]:
    """Per text and overall: KL mean/p90/p99/max, top-1 agreement and perplexity against ``reference``."""
    names = [name for name, _ in art.sequences]
    parts: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in names}
    split = partial(chunks, size=chunk_rows(art.vocab))
    for i, a, ref in reference.logits_chunks([ids for _, ids in art.sequences], split):
        name, ids = art.sequences[i]
        b = a + ref.shape[0]
        parts[name].append(per_token(ref, art.rows(name, a, b)[:, :ref.shape[1]], np.asarray(ids[a + 1:b + 1])))
    texts = [{"text": name, **summarize(parts[name])} for name in names]
    return {"summary": summarize([p for name in names for p in parts[name]]), "texts": texts}
