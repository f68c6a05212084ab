"""Calibration data for static (uint8 QDQ) quantisation of the static graphs.

The fp32 graphs are run over local text - CPython standard-library modules from the training split
of edgeqwen.corpus (never the held-out split that quality reports use) - and every feed they receive
is recorded: prefill chunks and single decode steps, with the KV cache as it really is at
that point, so activation ranges come from the graphs' real inputs. Olive reads the recording
through the two components registered below (this file is Olive's ``user_script``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from olive.data.registry import Registry

from edgeqwen.artifact import StaticSpec


@Registry.register_dataset("edgeqwen_recorded_feeds")
def recorded_feeds(path: str) -> list[tuple[dict[str, Any], int]]:
    with open(path, "rb") as f:
        return [(feed, 0) for feed in pickle.load(f)]


@Registry.register_dataloader("edgeqwen_unbatched")
def unbatched(dataset: list) -> list:
    return dataset  # each feed already has the graph's static shapes: no batch axis to add


def calibration_text(chars: int) -> str:
    from edgeqwen.corpus import read_texts, split_corpus

    train_files, _ = split_corpus()
    return read_texts(train_files[:: max(1, len(train_files) // 40)])[:chars]


class _Recorder:
    """Stands in for an onnxruntime session and keeps a copy of every feed."""

    def __init__(self, session, store: list) -> None:
        self.session, self.store = session, store

    def run(self, names, feed):
        self.store.append({k: v.copy() for k, v in feed.items()})
        return self.session.run(names, feed)


def record(folder: Path, spec: dict[str, Any], tokenizer_file: Path, work: Path, prefill_calls: int = 8,
           decode_calls: int = 24) -> dict[str, Path]:
    """Run the fp32 graphs in ``folder`` over calibration text; write one pickle of feeds per graph."""
    from tokenizers import Tokenizer

    from edgeqwen.runtime.backends.static import StaticBackend
    from edgeqwen.runtime.threads import resolve_threads

    backend = StaticBackend.on_cpu(folder, StaticSpec.from_dict(spec), threads=resolve_threads("auto"))
    chunk = backend.chunks["prefill"]
    ids = Tokenizer.from_file(str(tokenizer_file)).encode(calibration_text(200_000)).ids
    feeds: dict[str, list] = {"prefill": [], "decode": []}
    backend.sessions = {role: _Recorder(s, feeds[role]) for role, s in backend.sessions.items()}
    # several sequences, so calibration sees early and late cache positions of both graphs
    per_seq = chunk * 2 + decode_calls // 4
    for s in range(max(1, prefill_calls // 2)):
        seq = ids[s * per_seq:(s + 1) * per_seq]
        state = backend.new_state(len(seq))
        state.append(seq[:chunk * 2])
        for t in seq[chunk * 2:chunk * 2 + decode_calls // 4]:
            state.append([t])
    out = {}
    for role, store in feeds.items():
        out[role] = work / f"calibration_{role}.pkl"
        with open(out[role], "wb") as f:
            pickle.dump(store, f)
    return out
