"""Batched backend: the genai artifact's dynamic-KV graph run by plain onnxruntime, so that sequences
that decode at the same time share one graph run.

Where decode is memory-bound (every weight is read once per run whatever the batch), stepping four
sequences together costs little more than stepping one; where it is compute-bound it still saves
(the 0.5B int4 shape on 2 cores: 4 rows per run give 1.5-1.9x the tokens of one row,
benchmarks/batched_step.py). onnxruntime-genai 0.14 batches only sequences that start together; a
server's requests join and leave at any step, so this backend owns the state itself, one buffer per
state tensor of the manifest's ``runtime.layers`` (names, shapes and dtypes from there only):

    kv tensor    [slots, kv_heads, capacity, head_dim], one row per live sequence
    fixed tensor [slots, ...] (e.g. a recurrent state [slots, heads, d_k, d_v]), one row per live sequence

A kv buffer is bound as both the past input and the present output (GroupQueryAttention's shared-buffer
mode: each step writes the new positions in place, no copy). A fixed tensor is read from its buffer and
written to a scratch buffer, copied back only for the rows that stepped. Rows of different lengths step
together: the attention mask [rows, T] has row b's first len_b + 1 entries set, from which the graph
derives each row's own sequence length, rotary positions and write slot (a graph with mRoPE's position_ids
input, runtime.positions "mrope", is fed the same positions on its three axes: text).

A row that has no token in a decode step is masked, not re-run: it is fed a dummy token whose mask
covers len_b + 1 positions, so its kv layers write the dummy's keys/values at position len_b, beyond the
row's length: hidden by the mask of every later step and overwritten by the row's next real token. Its
fixed tensors keep their pre-step rows (the scratch rows are not copied back). Only a row that already
fills the whole context has no free position: it re-runs its own newest token at its own position
(same keys/values) and its fixed rows are kept the same way.

A row can be copied out (``snapshot``: its fixed tensors, and for a full snapshot its KV positions
below length) and written back into any row (``restore``), between graph runs: what the session's turn
boundaries and the server's prefix cache keep (edgeqwen.runtime.prefix_cache).

One scheduler thread runs every graph call; a sequence's ``append`` (from any thread) queues a work
item and waits on its future. Multi-token appends (prompts) run alone in chunks of PREFILL_CHUNK
tokens, taking turns with decode rounds; single tokens of all rows run as one batch. Rows are kept
packed at the front, so a step runs on [:live rows] only.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeqwen import allocator
from edgeqwen.artifact import BATCH, LayerState, RuntimeSpec, StateTensor
from edgeqwen.errors import ArtifactError, ContextOverflow
from edgeqwen.runtime.backends import Snapshot, StateLoops, check_rewind
from edgeqwen.runtime.providers import choose

# How long a decode round waits for live rows that have not queued their next token yet (they are
# sampling): short enough to cost nothing next to a step, long enough to catch them.
GATHER_S = 0.004
# Prompts run in chunks of this many tokens, one chunk between decode steps: a long prompt joining
# delays the rows already decoding by one chunk (~0.5-1 s for the 0.5B shape on 2 cores), not by its
# whole prefill.
PREFILL_CHUNK = 256
# State buffer shape to start from and to return to when no sequence is live: (slots, positions). One
# slot: a single conversation (chat, validation) holds one row of state (the Qwen3.5-9B shape's fixed state
# is 48 MB a row, twice over with the spare buffer); a server's slots double as clients join.
INITIAL = (1, 256)
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}
IDLE_CHECK_S = 1.0  # how often an idle scheduler looks whether its backend is still in use
# A prompt chunk's activations grow onnxruntime's CPU arena, which keeps what it grew for good (and, with
# each past length a different size, grows again: +1.9 GB over the session after the built-in loss text on
# the Qwen3.5-9B shape's 4-layer cut). Prompt steps hand the growth back when they end; decode steps, the
# ones whose speed matters, keep the arena as it is (off altogether, decode measured slower).
SHRINK_AFTER_PROMPT = "cpu:0"


def _schedule(backend: weakref.ref, work: queue.Queue) -> None:
    """The scheduler thread. It holds its backend only while work is in flight: an engine nobody holds any
    longer is freed with its session (validation loads the artifact, its twin, then the reference, each
    after the previous one is gone), and the thread ends."""
    while True:
        try:
            first = work.get(timeout=IDLE_CHECK_S)
        except queue.Empty:
            if backend() is None:
                return
            continue
        held = backend()
        if held is None:
            return
        held._until_idle(first)
        del held, first  # a finished work item's state holds the backend too


# -- work items: what a request thread hands the scheduler, each with the future it waits on ------------
@dataclass(frozen=True, eq=False)
class Join:
    state: BatchedState
    done: Future = field(default_factory=Future)


@dataclass(frozen=True, eq=False)
class Leave:
    state: BatchedState
    done: Future = field(default_factory=Future)


@dataclass(frozen=True, eq=False)
class Rewind:
    state: BatchedState
    length: int  # positions to keep
    last: int  # the token at position length - 1 (0 for none)
    done: Future = field(default_factory=Future)


@dataclass(frozen=True, eq=False)
class Append:
    state: BatchedState
    ids: tuple[int, ...]
    done: Future = field(default_factory=Future)  # -> logits [V] after the last id

    @property
    def prompt(self) -> bool:
        """Several tokens: runs alone (in chunks); a single token steps with the other rows."""
        return len(self.ids) > 1


@dataclass(frozen=True, eq=False)
class Save:
    state: BatchedState
    kv: bool  # copy the KV positions too (a full snapshot)
    done: Future = field(default_factory=Future)  # -> Snapshot


@dataclass(frozen=True, eq=False)
class Load:
    state: BatchedState
    snap: Snapshot
    done: Future = field(default_factory=Future)


Work = Join | Leave | Rewind | Append | Save | Load


class BatchedBackend(StateLoops):
    def __init__(self, folder: Path, runtime: RuntimeSpec, threads: int, provider: str | None = None) -> None:
        import onnxruntime as ort

        if runtime.model_file is None:
            raise ArtifactError(f"artifact {folder}: the batched backend runs dynamic-shape graphs (runtime.model_file); "
                                f"this artifact has backend {runtime.backend!r}")
        self._ort = ort
        self.provider = choose(provider, runtime.execution_provider, {"cpu"})
        self.context_length = runtime.context_length
        self.vocab_size = runtime.vocab_size
        self.truncatable = runtime.truncatable
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / runtime.model_file), options,
                                            providers=["CPUExecutionProvider"])
        self._prompt_run = ort.RunOptions()
        self._prompt_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", SHRINK_AFTER_PROMPT)
        # Loading read every weight through the mapped file; what onnxruntime prepacked lives in its own
        # buffers now, and the rest is read in place a row at a time (the embedding table): not kept resident
        allocator.page_out(str(folder))
        self.tensors = _state_tensors(folder, runtime.layers, self.session)
        kinds = {i.name: i.type for i in self.session.get_inputs()}
        self.positions = runtime.positions == "mrope"  # feed position_ids [3, rows, S] (text: three equal axes)
        self.visual = runtime.visual_input  # fed zero rows: this backend runs text
        self.no_features = None if self.visual is None else self.visual.empty()  # [0, hidden], made once
        wanted = (["position_ids"] if self.positions else []) + ([self.visual.input] if self.visual else [])
        for name in wanted:
            if name not in kinds:
                raise ArtifactError(f"artifact {folder}: the runtime section names graph input {name}, which the graph "
                                    "does not have; rebuild the artifact")
        self.ids_dtype = np.int32 if kinds.get("input_ids") == "tensor(int32)" else np.int64
        self.mask_dtype = np.int32 if kinds.get("attention_mask") == "tensor(int32)" else np.int64
        self.max_batch, self.capacity = INITIAL  # both double when needed
        self.cache = self._alloc(*INITIAL)  # state input name -> buffer [slots, ...]
        self.spare = self._spares()  # fixed tensors: the buffer the next decode step writes into
        self.rows: list[BatchedState] = []  # live sequences; rows[i] owns row i of every buffer
        self.steps = 0  # batched decode runs, and how many rows had a token in them (tests and metrics)
        self.rows_stepped = 0
        self._queue: queue.Queue[Work] = queue.Queue()
        self._thread = threading.Thread(target=_schedule, args=(weakref.ref(self), self._queue),
                                        name="edgeqwen-batch", daemon=True)
        self._thread.start()

    # -- the Backend interface ----------------------------------------------------------------------
    def new_state(self, capacity: int) -> "BatchedState":
        return BatchedState(self)

    # -- called from request threads ------------------------------------------------------------------
    def _submit(self, work: Work) -> Future:
        self._queue.put(work)
        return work.done

    # -- the scheduler thread ---------------------------------------------------------------------------
    def _alloc(self, slots: int, capacity: int) -> dict[str, np.ndarray]:
        # a fresh sequence's state is zeros: an empty KV cache, a recurrent layer's initial state
        return {t.input: np.zeros(t.concrete(slots, capacity), np.dtype(t.dtype)) for t in self.tensors}

    def _spares(self) -> dict[str, np.ndarray]:
        """A second buffer per fixed tensor, the size of the first: a decode step reads one and writes the other,
        and the two swap (the 0.8B Qwen3.5 shape's recurrent states are 19 MB a row: a copy back per token
        would cost more than the step's state arithmetic)."""
        return {t.input: np.zeros_like(self.cache[t.input]) for t in self.tensors if t.sequence_axis is None}

    def _until_idle(self, first: Work) -> None:
        """Work from ``first`` on, and whatever arrives meanwhile, until none is pending."""
        pending: list[Work] = [first]
        prompt_turn = True  # prompt chunks and decode rounds take turns while both wait
        while True:
            pending = self._control(pending + self._drain())
            if not pending:
                return
            prompts = [a for a in pending if a.prompt]
            if prompts and (prompt_turn or all(a.prompt for a in pending)):
                pending.remove(prompts[0])
                rest = self._prefill_chunk(prompts[0])
                if rest is not None:
                    pending.insert(0, rest)
                prompt_turn = False
                continue
            prompt_turn = True
            pending = self._gather(pending)
            steps = [a for a in pending if not a.prompt]  # a prompt that came meanwhile waits a round
            pending = [a for a in pending if a.prompt]
            if steps:
                self._run_guarded(steps)

    def _prefill_chunk(self, work: Append) -> Append | None:
        """Run the first PREFILL_CHUNK tokens of a prompt; return what is left of it (its caller waits for
        the last chunk's logits), or None when done."""
        state, ids = work.state, work.ids
        if state.length + len(ids) > self.context_length:
            work.done.set_exception(ContextOverflow(f"{state.length + len(ids)} tokens exceed the context length "
                                                    f"{self.context_length}"))
            return None
        if len(ids) <= PREFILL_CHUNK:
            self._run_guarded([work])
            return None
        head = Append(state, ids[:PREFILL_CHUNK])
        self._run_guarded([head])
        if head.done.exception() is not None:
            work.done.set_exception(head.done.exception())
            return None
        return Append(state, ids[PREFILL_CHUNK:], work.done)

    def _drain(self) -> list[Work]:
        got: list[Work] = []
        while True:
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                return got

    def _control(self, items: list[Work]) -> list[Append]:
        """Handle joins, leaves and rewinds (cheap, in order) and keep the appends."""
        keep = []
        for work in items:
            if isinstance(work, Append):
                keep.append(work)
                continue
            try:
                result = None
                if isinstance(work, Join):
                    self._join(work.state)
                elif isinstance(work, Leave):
                    self._leave(work.state)
                elif isinstance(work, Save):
                    result = self._save(work.state, work.kv)
                elif isinstance(work, Load):
                    self._load(work.state, work.snap)
                else:  # positions past length are masked out and overwritten as tokens arrive
                    work.state.length, work.state.last = work.length, work.last
            except BaseException as e:  # e.g. no memory for a grown buffer: the caller gets it
                work.done.set_exception(e)
            else:
                work.done.set_result(result)
        return keep

    def _gather(self, pending: list[Append]) -> list[Append]:
        """Wait briefly until every live row has queued its token, so they step together."""
        deadline = time.perf_counter() + GATHER_S
        while True:
            waiting = {id(a.state) for a in pending}
            if len(waiting) >= len(self.rows) or time.perf_counter() >= deadline:
                return pending
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                return pending
            pending = self._control(pending + [item])
            if any(a.prompt for a in pending):
                return pending

    def _join(self, state: "BatchedState") -> None:
        if len(self.rows) == self.max_batch:
            self._regrow(2 * self.max_batch, self.capacity)
        state.row = len(self.rows)
        for t in self.tensors:  # a fixed state starts from zeros (a kv row is masked until written)
            if t.sequence_axis is None:
                self.cache[t.input][state.row] = 0
        self.rows.append(state)

    def _leave(self, state: "BatchedState") -> None:
        if state.row is None:
            return
        i, last = state.row, len(self.rows) - 1
        if i != last:  # keep rows packed: the last row moves into the hole
            moved = self.rows[last]
            for t in self.tensors:
                buf = self.cache[t.input]
                # kv: its cached positions only ([:length] on the sequence axis); fixed: the whole row
                held = _rows(t, last, moved.length)
                buf[_rows(t, i, moved.length)] = buf[held]
            self.rows[i], moved.row = moved, i
        self.rows.pop()
        state.row = None
        if not self.rows and (self.capacity > INITIAL[1] or self.max_batch > INITIAL[0]):
            self.cache = self._alloc(*INITIAL)  # idle: give back what a burst of long sequences grew
            self.max_batch, self.capacity = INITIAL
            self.spare = self._spares()

    def _save(self, state: "BatchedState", kv: bool) -> Snapshot:
        """Copies of the row's fixed tensors (and its KV positions below length, for a full snapshot)."""
        fixed, cached = {}, {}
        for t in self.tensors:
            row = self.cache[t.input][_rows(t, state.row, state.length)]
            if t.sequence_axis is None:
                fixed[t.input] = row.copy()
            elif kv:
                cached[t.input] = row.copy()
        return Snapshot(tuple(state.tokens[:state.length]), fixed, cached if kv else None)

    def _load(self, state: "BatchedState", snap: Snapshot) -> None:
        n = len(snap.tokens)
        if snap.kv is not None:
            self._grow_to(n)
        for t in self.tensors:
            if t.sequence_axis is None:
                self.cache[t.input][state.row] = snap.fixed[t.input]
            elif snap.kv is not None:
                self.cache[t.input][_rows(t, state.row, n)] = snap.kv[t.input]
        state.length, state.last = n, (snap.tokens[-1] if snap.tokens else 0)

    def _regrow(self, slots: int, capacity: int) -> None:
        new = self._alloc(slots, capacity)
        n, c = len(self.rows), min(self.capacity, capacity)
        for t in self.tensors:
            keep = _rows(t, slice(0, n), c)
            new[t.input][keep] = self.cache[t.input][keep]
        self.cache, self.max_batch, self.capacity = new, slots, capacity
        self.spare = self._spares()

    def _run_guarded(self, work: list[Append]) -> None:
        try:
            self._run(work)
        except BaseException as e:  # the waiting request threads get the error, the loop lives on
            for w in work:
                if not w.done.done():
                    w.done.set_exception(e)

    def _run(self, work: list[Append]) -> None:
        """One graph run: a single multi-token append (its row alone), or one token for every live row."""
        if len(work) == 1 and work[0].prompt:
            self._prefill(work[0])
        else:
            self._decode(work)

    def _grow_to(self, need: int) -> None:
        if need > self.capacity:
            self._regrow(self.max_batch, min(self.context_length, max(need, 2 * self.capacity)))

    def _prefill(self, work: Append) -> None:
        state, ids = work.state, list(work.ids)
        total = state.length + len(ids)
        if total > self.context_length:
            raise ContextOverflow(f"{total} tokens exceed the context length {self.context_length}")
        self._grow_to(total)
        logits = self._step(state.row, state.row + 1, np.asarray([ids]), [total])
        state.length, state.last = total, ids[-1]
        work.done.set_result(logits[0])

    def _decode(self, work: list[Append]) -> None:
        """One token for each row in ``work``; the other live rows are masked (module docstring)."""
        full = [w for w in work if w.state.length + 1 > self.context_length]
        for w in full:
            w.done.set_exception(ContextOverflow(f"{w.state.length + 1} tokens exceed the context length "
                                                 f"{self.context_length}"))
        work = [w for w in work if w not in full]
        if not work:
            return
        n = len(self.rows)
        tokens = np.zeros((n, 1), np.int64)  # [rows, 1]; an idle row's dummy is token 0
        totals = [r.length + 1 for r in self.rows]  # an idle row writes its dummy at position length: hidden
        active = np.zeros(n, bool)
        for b, r in enumerate(self.rows):
            if r.length == self.context_length:  # no free position: rewrite the newest with its own token
                tokens[b, 0], totals[b] = r.last, r.length
        for w in work:
            b = w.state.row
            tokens[b, 0], totals[b], active[b] = w.ids[0], w.state.length + 1, True
        self._grow_to(max(totals))
        logits = self._step(0, n, tokens, totals, active)
        for w in work:
            w.state.length, w.state.last = w.state.length + 1, w.ids[0]
            w.done.set_result(logits[w.state.row])
        self.steps += 1
        self.rows_stepped += len(work)

    def _step(self, lo: int, hi: int, tokens: np.ndarray, totals: list[int],
              active: np.ndarray | None = None) -> np.ndarray:
        """Run rows lo:hi. tokens [rows, S]; totals[b] = row b's mask length this step; active [rows] bool:
        the rows whose fixed state this step advances (None: all). -> logits [rows, V]"""
        ort = self._ort
        width = max(totals)
        mask = np.zeros((hi - lo, width), self.mask_dtype)
        for b, t in enumerate(totals):
            mask[b, :t] = 1
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(tokens, dtype=self.ids_dtype))
        io.bind_cpu_input("attention_mask", mask)
        if self.positions:  # row b's tokens sit at its last S positions: totals[b] - S, ..., totals[b] - 1
            steps = tokens.shape[1]
            where = np.asarray(totals, np.int64)[:, None] - steps + np.arange(steps, dtype=np.int64)  # [rows, S]
            io.bind_cpu_input("position_ids", np.ascontiguousarray(np.broadcast_to(where, (3, *where.shape))))
        if self.visual is not None:
            io.bind_cpu_input(self.visual.input, self.no_features)
        fixed: list[str] = []
        for t in self.tensors:
            rows = self.cache[t.input][lo:hi]  # a view: contiguous, rows are the leading axis
            value = ort.OrtValue.ortvalue_from_numpy(rows)
            io.bind_ortvalue_input(t.input, value)
            if t.sequence_axis is not None:  # kv: the shared past/present buffer, new positions written in place
                io.bind_ortvalue_output(t.output, value)
            else:  # fixed: the graph reads the old state while writing the new one, into the spare buffer
                io.bind_ortvalue_output(t.output, ort.OrtValue.ortvalue_from_numpy(self.spare[t.input][lo:hi]))
                fixed.append(t.input)
        io.bind_output("logits")
        self.session.run_with_iobinding(io, self._prompt_run if tokens.shape[1] > 1 else None)
        every_row = lo == 0 and hi == len(self.rows)
        for name in fixed:
            old, new = self.cache[name], self.spare[name]
            if not every_row:  # one row's prompt chunk: copy its rows back, the other rows are untouched
                old[lo:hi] = new[lo:hi]
                continue
            if active is not None and not active.all():
                new[:hi][~active] = old[:hi][~active]  # idle rows keep their pre-step state
            self.cache[name], self.spare[name] = new, old  # the written buffer becomes the state
        logits = io.get_outputs()[-1].numpy()  # [rows, S or 1, V]
        return np.asarray(logits[:, -1], dtype=np.float32)


def _state_tensors(folder: Path, layers: tuple[LayerState, ...], session) -> tuple[StateTensor, ...]:
    """runtime.layers' tensors, checked against the graph: rows on axis 0, names and dtypes as it has them."""
    inputs = {i.name: i.type for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    tensors = tuple(t for layer in layers for t in layer.tensors)
    for t in tensors:
        where = f"artifact {folder}: runtime.layers state tensor {t.input}"
        if t.batch_axis != 0:
            raise ArtifactError(f"{where} has no {BATCH!r} axis first; the batched backend keeps one row per sequence")
        if t.input not in inputs or t.output not in outputs:
            raise ArtifactError(f"{where} (output {t.output}) is not in the graph; rebuild the artifact")
        if inputs[t.input] != _ORT_TYPES[t.dtype]:
            raise ArtifactError(f"{where} is {t.dtype}, but the graph takes {inputs[t.input]}; rebuild the artifact")
    return tensors


def _rows(t: StateTensor, rows: int | slice, length: int) -> tuple[int | slice, ...]:
    """An index of ``rows`` of t's buffer: for kv the first ``length`` positions of the sequence axis,
    for a fixed tensor everything."""
    if t.sequence_axis is None:
        return (rows,)
    return (rows,) + (slice(None),) * (t.sequence_axis - 1) + (slice(0, length),)


class BatchedState:
    """One sequence: a row of each of the backend's shared state buffers."""

    snapshots = True

    def __init__(self, backend: BatchedBackend) -> None:
        self.backend = backend
        self.truncatable = backend.truncatable
        self.tokens: list[int] = []
        self.length = 0  # positions this row holds; with ``last``, written by the scheduler thread only
        self.last = 0  # the token at position length - 1
        self.row: int | None = None
        backend._submit(Join(self)).result()

    def append(self, ids: Sequence[int]) -> np.ndarray:
        ids = tuple(int(t) for t in ids)
        if not ids:
            raise ValueError("append needs at least one token")
        if self.row is None:
            raise RuntimeError("this sequence was closed")
        logits = self.backend._submit(Append(self, ids)).result()
        self.tokens.extend(ids)
        return logits

    def rewind(self, n: int) -> None:
        if check_rewind(self, n):
            del self.tokens[n:]
            # the scheduler moves length and last together, between graph runs
            self.backend._submit(Rewind(self, n, self.tokens[-1] if self.tokens else 0)).result()

    def snapshot(self, kv: bool = True) -> Snapshot:
        if self.row is None:
            raise RuntimeError("this sequence was closed")
        return self.backend._submit(Save(self, kv)).result()

    def restore(self, snap: Snapshot) -> None:
        if self.row is None:
            raise RuntimeError("this sequence was closed")
        n = len(snap.tokens)
        if snap.kv is None and tuple(self.tokens[:n]) != snap.tokens:
            raise ValueError(f"a light snapshot of {n} tokens restores only into a state holding them as a prefix "
                             f"(this one holds {len(self.tokens)} tokens that differ)")
        if snap.kv is not None and set(snap.kv) | set(snap.fixed) != {t.input for t in self.backend.tensors}:
            raise ValueError("the snapshot is of another artifact's state tensors")
        self.backend._submit(Load(self, snap)).result()
        self.tokens = list(snap.tokens)

    def close(self) -> None:
        """Give the row back (the server calls this when a request ends or its client goes away)."""
        if self.row is not None:
            self.backend._submit(Leave(self)).result()
