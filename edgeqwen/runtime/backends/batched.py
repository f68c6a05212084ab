"""Batched backend: the genai artifact's dynamic-KV graph run by plain onnxruntime, so that sequences
that decode at the same time share one graph run.

Where decode is memory-bound (every weight is read once per run whatever the batch), stepping four
sequences together costs little more than stepping one; where it is compute-bound it still saves
(the 0.5B int4 shape on 2 cores: 4 rows per run give 1.5-1.9x the tokens of one row,
benchmarks/batched_step.py). onnxruntime-genai 0.14 batches only sequences that start together; a
server's requests join and leave at any step, so this backend owns the KV cache itself:

    keys/values per layer: [slots, kv_heads, capacity, head_dim], one row per live sequence

and binds it as both ``past_key_values.*`` and ``present.*`` (GroupQueryAttention's shared-buffer
mode: each step writes the new position in place, no copy). Rows of different lengths step together:
the attention mask [rows, T] has row b's first len_b + 1 entries set, from which the graph derives
each row's own sequence length, rotary positions and write slot. A row that has no token this step
rides along with its last token again; its KV slot is rewritten by its next real step.

One scheduler thread runs every graph call; a sequence's ``append`` (from any thread) queues its
tokens and waits. Multi-token appends (prompts) run alone in chunks of PREFILL_CHUNK tokens, taking
turns with decode rounds; single tokens of all rows run as one batch. Rows are kept packed at the
front, so a step runs on [:live rows] only.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeqwen.artifact import RuntimeSpec
from edgeqwen.errors import ArtifactError, ContextOverflow
from edgeqwen.runtime.backends import StateLoops
from edgeqwen.runtime.providers import choose

# How long a decode round waits for live rows that have not queued their next token yet (they are
# sampling): short enough to cost nothing next to a step, long enough to catch them.
GATHER_S = 0.004
# Prompts run in chunks of this many tokens, one chunk between decode steps: a long prompt joining
# delays the rows already decoding by one chunk (~0.5-1 s for the 0.5B shape on 2 cores), not by its
# whole prefill.
PREFILL_CHUNK = 256
# KV buffer shape to start from and to return to when no sequence is live: (slots, positions)
INITIAL = (4, 256)


class BatchedBackend(StateLoops):
    def __init__(self, folder: Path, runtime: RuntimeSpec, threads: int, provider: str | None = None) -> None:
        import onnxruntime as ort

        if runtime.model_file is None or runtime.genai_config is None:
            raise ArtifactError(f"artifact {folder}: the batched backend runs genai graphs (runtime.model_file "
                                f"and runtime.genai_config); this artifact has backend {runtime.backend!r}")
        self._ort = ort
        self.provider = choose(provider, runtime.execution_provider, {"cpu"})
        decoder = json.loads((folder / runtime.genai_config).read_text(encoding="utf-8"))["model"]["decoder"]
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_dim = int(decoder["head_size"])
        self.context_length = runtime.context_length
        self.vocab_size = runtime.vocab_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / runtime.model_file), options,
                                            providers=["CPUExecutionProvider"])
        kinds = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = np.float16 if kinds.get("past_key_values.0.key") == "tensor(float16)" else np.float32
        self.ids_dtype = np.int32 if kinds.get("input_ids") == "tensor(int32)" else np.int64
        self.mask_dtype = np.int32 if kinds.get("attention_mask") == "tensor(int32)" else np.int64
        self.kv_names = [f"{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
        self.max_batch, self.capacity = INITIAL  # both double when needed
        self.cache = self._alloc(*INITIAL)
        self.rows: list[BatchedState] = []  # live sequences; rows[i] owns cache row i
        self.steps = 0  # graph runs, and how many rows they carried (for tests and metrics)
        self.rows_stepped = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="edgeqwen-batch", daemon=True)
        self._thread.start()

    # -- the Backend interface ----------------------------------------------------------------------
    def new_state(self, capacity: int) -> "BatchedState":
        return BatchedState(self)

    # -- called from request threads ------------------------------------------------------------------
    def _submit(self, op: tuple) -> Future:
        fut: Future = Future()
        self._queue.put((op, fut))
        return fut

    # -- the scheduler thread ---------------------------------------------------------------------------
    def _alloc(self, slots: int, capacity: int) -> dict[str, np.ndarray]:
        shape = (slots, self.kv_heads, capacity, self.head_dim)
        return {name: np.zeros(shape, self.kv_dtype) for name in self.kv_names}

    def _loop(self) -> None:
        pending: list[tuple[tuple, Future]] = []
        prompt_turn = True  # prompt chunks and decode rounds take turns while both wait
        while True:
            if not pending:
                pending.append(self._queue.get())
            pending += self._drain()
            pending = self._control(pending)
            prompts = [p for p in pending if len(p[0][2]) > 1]
            if prompts and (prompt_turn or not any(len(p[0][2]) == 1 for p in pending)):
                pending.remove(prompts[0])
                rest = self._prefill_chunk(*prompts[0])
                if rest is not None:
                    pending.insert(0, rest)
                prompt_turn = False
                continue
            prompt_turn = True
            pending = self._gather(pending)
            steps = [p for p in pending if len(p[0][2]) == 1]  # a prompt that came meanwhile waits a round
            pending = [p for p in pending if len(p[0][2]) > 1]
            if steps:
                self._run_guarded(steps)

    def _prefill_chunk(self, op: tuple, fut: Future) -> tuple | None:
        """Run the first PREFILL_CHUNK tokens of a prompt; return what is left of it (its caller waits for
        the last chunk's logits), or None when done."""
        state, ids = op[1], op[2]
        if state.length + len(ids) > self.context_length:
            fut.set_exception(ContextOverflow(f"{state.length + len(ids)} tokens exceed the context length "
                                              f"{self.context_length}"))
            return None
        if len(ids) <= PREFILL_CHUNK:
            self._run_guarded([(op, fut)])
            return None
        head: Future = Future()
        self._run_guarded([(("append", state, ids[:PREFILL_CHUNK]), head)])
        if head.exception() is not None:
            fut.set_exception(head.exception())
            return None
        return ("append", state, ids[PREFILL_CHUNK:]), fut

    def _drain(self) -> list:
        got = []
        while True:
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                return got

    def _control(self, pending: list) -> list:
        """Handle joins and leaves (cheap, in order) and keep the appends."""
        keep = []
        for op, fut in pending:
            if op[0] == "join":
                self._join(op[1])
                fut.set_result(None)
            elif op[0] == "leave":
                self._leave(op[1])
                fut.set_result(None)
            elif op[0] == "rewind":
                op[1].length, op[1].last = op[2], op[3]
                fut.set_result(None)
            else:
                keep.append((op, fut))
        return keep

    def _gather(self, pending: list) -> list:
        """Wait briefly until every live row has queued its token, so they step together."""
        deadline = time.perf_counter() + GATHER_S
        while True:
            waiting = {id(op[1]) for op, _ in pending}  # _control left only appends
            if len(waiting) >= len(self.rows) or time.perf_counter() >= deadline:
                return pending
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                return pending
            pending = self._control(pending + [item])
            if any(len(op[2]) > 1 for op, _ in pending):
                return pending

    def _join(self, state: "BatchedState") -> None:
        if len(self.rows) == self.max_batch:
            self._regrow(2 * self.max_batch, self.capacity)
        state.row = len(self.rows)
        self.rows.append(state)

    def _leave(self, state: "BatchedState") -> None:
        if state.row is None:
            return
        i, last = state.row, len(self.rows) - 1
        if i != last:  # keep rows packed: the last row moves into the hole
            moved = self.rows[last]
            for buf in self.cache.values():
                buf[i, :, :moved.length] = buf[last, :, :moved.length]
            self.rows[i], moved.row = moved, i
        self.rows.pop()
        state.row = None
        if not self.rows and (self.capacity > INITIAL[1] or self.max_batch > INITIAL[0]):
            self.cache = self._alloc(*INITIAL)  # idle: give back what a burst of long sequences grew
            self.max_batch, self.capacity = INITIAL

    def _regrow(self, slots: int, capacity: int) -> None:
        new = self._alloc(slots, capacity)
        n, c = len(self.rows), min(self.capacity, capacity)
        for name, buf in self.cache.items():
            new[name][:n, :, :c] = buf[:n, :, :c]
        self.cache, self.max_batch, self.capacity = new, slots, capacity

    def _run_guarded(self, ops: list) -> None:
        try:
            self._run(ops)
        except BaseException as e:  # the waiting request threads get the error, the loop lives on
            for _, fut in ops:
                if not fut.done():
                    fut.set_exception(e)

    def _run(self, ops: list) -> None:
        """One graph run: a single multi-token append (its row alone), or one token for every live row."""
        states = [op[1] for op, _ in ops]
        need = max([s.length + len(op[2]) for s, (op, _) in zip(states, ops)] + [r.length + 1 for r in self.rows])
        if need > self.context_length:
            raise ContextOverflow(f"{need} tokens exceed the context length {self.context_length}")
        if need > self.capacity:
            self._regrow(self.max_batch, min(self.context_length, max(need, 2 * self.capacity)))
        if len(ops) == 1 and len(ops[0][0][2]) > 1:
            state, ids = states[0], list(ops[0][0][2])
            logits = self._step(state.row, state.row + 1, np.asarray([ids]), [state.length + len(ids)])
            state.length, state.last = state.length + len(ids), ids[-1]
            ops[0][1].set_result(logits[0])
            return
        n = len(self.rows)
        tokens = np.array([r.last for r in self.rows])[:, None]  # riders repeat their last token
        lengths = [r.length for r in self.rows]
        for (op, _), s in zip(ops, states):
            tokens[s.row, 0] = op[2][0]
            lengths[s.row] = s.length + 1
        logits = self._step(0, n, tokens, [max(1, ln) for ln in lengths])
        for (op, fut), s in zip(ops, states):
            # length and last move together, here: a row that rides along in the next run (before its
            # owner thread wakes) must rewrite its newest position with that position's own token
            s.length, s.last = s.length + 1, op[2][0]
            fut.set_result(logits[s.row])
        self.steps += 1
        self.rows_stepped += len(ops)

    def _step(self, lo: int, hi: int, tokens: np.ndarray, totals: list[int]) -> np.ndarray:
        """Run rows lo:hi. tokens [rows, S]; totals[b] = row b's length after this step. -> logits [rows, V]"""
        ort = self._ort
        width = max(totals)
        mask = np.zeros((hi - lo, width), self.mask_dtype)
        for b, t in enumerate(totals):
            mask[b, :t] = 1
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(tokens, dtype=self.ids_dtype))
        io.bind_cpu_input("attention_mask", mask)
        for name, buf in self.cache.items():
            value = ort.OrtValue.ortvalue_from_numpy(buf[lo:hi])  # a view: shared past/present buffer
            io.bind_ortvalue_input(f"past_key_values.{name}", value)
            io.bind_ortvalue_output(f"present.{name}", value)
        io.bind_output("logits")
        self.session.run_with_iobinding(io)
        logits = io.get_outputs()[-1].numpy()  # [rows, S or 1, V]
        return np.asarray(logits[:, -1], dtype=np.float32)


class BatchedState:
    """One sequence: a row of the backend's shared KV cache."""

    def __init__(self, backend: BatchedBackend) -> None:
        self.backend = backend
        self.tokens: list[int] = []
        self.length = 0  # positions cached in this row; with ``last``, written by the scheduler thread only
        self.last = 0  # the token at position length - 1
        self.row: int | None = None
        backend._submit(("join", self)).result()

    def append(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("append needs at least one token")
        if self.row is None:
            raise RuntimeError("this sequence was closed")
        logits = self.backend._submit(("append", self, ids)).result()
        self.tokens.extend(ids)
        return logits

    def rewind(self, n: int) -> None:
        if n < len(self.tokens):
            del self.tokens[n:]
            # positions past n are masked out and overwritten as tokens arrive; the scheduler moves
            # length and last together so a ride-along run never sees half of the change
            self.backend._submit(("rewind", self, n, self.tokens[-1] if self.tokens else 0)).result()

    def close(self) -> None:
        """Give the row back (the server calls this when a request ends or its client goes away)."""
        if self.row is not None:
            self.backend._submit(("leave", self)).result()
