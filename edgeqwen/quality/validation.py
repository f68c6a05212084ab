"""Teacher-forced comparison of an artifact with its transformers reference.

For every built-in text the artifact takes the first quarter as one prefill step and then every
following token as a decode step, so both the prefill and the KV-cache path are compared with one
full forward pass of the reference at each position. The artifact also decodes greedily from each
prompt; the reference checks that continuation in one teacher-forced pass: greedy decoding of the
reference would have produced the same tokens exactly up to the first position where its argmax
differs from the artifact's token, so ``greedy_match`` is that position (or the whole length).

The two sides run one after the other (``run_artifact``, then ``compare``): the artifact's outputs
are kept (a few MB of logits) and the engine can be closed before the reference loads, so a
validation needs the larger of the two in memory, not both.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeqwen import allocator
from edgeqwen.quality.fresh_process import run_fresh
from edgeqwen.quality.graph_weights import ArtifactWeights
from edgeqwen.quality.loss_text import ArtifactLogits, compare_loss, loss_sequences, run_artifact_loss
from edgeqwen.quality.metrics import per_token
from edgeqwen.quality.parity import exact_compute_twin
from edgeqwen.quality.results import (
    Gate,
    GateSummary,
    Int8Effect,
    LogitComparison,
    LossSkipped,
    PromptResult,
    QuantizationLoss,
    Validation,
    WeightCheck,
)
from edgeqwen.quality.reference import (
    Reference,
    checkpoint_tensor_map,
    fits_whole,
    load_tokenizer,
    open_reference,
    prompt_ids,
)
from edgeqwen.quality.weight_check import check_weights
from edgeqwen.runtime.memory import peak_rss_mb
from edgeqwen.targets import QualityBounds, ValidationBounds

PROMPTS: list[tuple[str, str]] = [
    ("english", "The old lighthouse keeper climbed the stairs every evening at dusk. He trimmed the wick, "
                "polished the great lens and watched the ships pass far out on the dark water, counting "
                "their lights until the morning came."),
    ("chinese", "春天来了，山上的花都开了。小河里的水慢慢地流着，孩子们在河边放风筝，老人们坐在树下喝茶聊天，"
                "整个村子都充满了笑声。"),
    ("code", "def fibonacci(n: int) -> list[int]:\n    \"\"\"Return the first n Fibonacci numbers.\"\"\"\n"
             "    result = [0, 1]\n    while len(result) < n:\n        result.append(result[-1] + result[-2])\n"
             "    return result[:n]\n"),
    ("chat", "CHAT"),
]


TIE = 1e-4  # logits this close are a tie: quantised tables can hold identical rows, and ulps pick between them


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per row: the artifact's top token is the reference's, or ties with it within ``TIE`` (a 4-bit tied
    table made two tokens' logits equal; which one argmax picks is float noise, not a disagreement)."""
    pick = test.argmax(-1)
    return ref[np.arange(len(ref)), pick] >= ref.max(-1) - TIE


def compare_logits(ref: np.ndarray, test: np.ndarray, targets: list[int]) -> LogitComparison:
    """``targets``: the tokens rows 0..len(targets)-1 predict (the last row predicts past the text)."""
    n = len(targets)
    # blocked per-token metrics (edgeqwen.quality.metrics.per_token): the same numbers as whole-array
    # log-softmaxes to 1e-15, 4x faster at a 151,936 vocabulary; the last row has no target (0 is a stand-in)
    padded = np.zeros(ref.shape[0], dtype=np.int64)
    padded[:n] = targets
    parts = per_token(ref, test, padded)
    kl = parts["kl"]
    return LogitComparison(
        positions=int(ref.shape[0]),
        max_abs_logit_diff=float(np.abs(ref.astype(np.float64) - test).max()),
        kl_mean=float(kl.mean()),
        kl_p90=float(np.percentile(kl, 90)),
        kl_p99=float(np.percentile(kl, 99)),
        kl_max=float(kl.max()),
        top1_agreement=float(top1_agreement(ref, test).mean()),
        kl=kl, nll_ref=parts["nll_ref"][:n], nll_test=parts["nll_test"][:n])


@dataclass
class ArtifactOutputs:
    """What the artifact computed for each validation prompt."""

    ids: dict[str, list[int]]  # the reference tokenizer's ids
    tokenizer_match: dict[str, bool]
    logits: dict[str, np.ndarray]  # [positions from the end of the prefill, vocab]
    prefill: dict[str, int]
    gen_prompt: dict[str, list[int]]
    generated: dict[str, list[int]]


@dataclass(frozen=True)
class Prompt:
    name: str
    ids: list[int]  # the reference tokenizer's
    text: str  # the ids decoded: the artifact's tokenizer must give the same ids for it
    chat: bool  # the templated chat turn (generated from its end, not from a quarter of it)


@dataclass(frozen=True)
class Texts:
    """What the artifact is fed, tokenized by the reference's (transformers) tokenizer before the artifact
    loads: at Qwen3.5's 248,320-token vocabulary a tokenizer holds ~330 MB, which a large model's
    validation does not keep beside the artifact's session."""

    prompts: list[Prompt]
    loss: list[tuple[str, list[int]]]  # the built-in loss texts, uncut (edgeqwen.quality.loss_text)


def tokenize_texts(tokenizer, loss: bool) -> Texts:
    prompts = []
    for name, source in PROMPTS:
        ids = prompt_ids(tokenizer, source)
        prompts.append(Prompt(name, ids, tokenizer.decode(ids), source == "CHAT"))
    return Texts(prompts, loss_sequences(tokenizer, 1 << 30) if loss else [])


def tokenized(model_path: Path, loss_text: bool, log=print) -> Texts:
    """tokenize_texts with the checkpoint's tokenizer (for run_fresh: a module-level function)."""
    return tokenize_texts(load_tokenizer(model_path), loss_text)


def run_artifact(engine, texts: Texts, greedy_tokens: int) -> ArtifactOutputs:
    """The prompts' ids are the reference tokenizer's (``texts``); the artifact's own tokenizer must give
    the same ids for the same text, checked first and then dropped (another ~290 MB at Qwen3.5's size)."""
    out = ArtifactOutputs({}, {}, {}, {}, {}, {})
    for p in texts.prompts:
        out.tokenizer_match[p.name] = engine.encode(p.text) == p.ids
    engine.release_tokenizer()
    for p in texts.prompts:
        prefill = max(1, len(p.ids) // 4)
        out.ids[p.name], out.prefill[p.name] = p.ids, prefill
        out.logits[p.name] = engine.backend.teacher_forced_logits(p.ids, prefill)
        # The chat turn is generated from the whole templated prompt (it ends with the assistant header).
        out.gen_prompt[p.name] = p.ids if p.chat else p.ids[:prefill]
        out.generated[p.name] = engine.backend.greedy(out.gen_prompt[p.name], greedy_tokens)
    return out


def greedy_agreement(ref_logits: np.ndarray, prompt_len: int, generated: list[int]) -> int:
    """How many of the artifact's greedy tokens the reference's own greedy decoding reproduces.
    ``ref_logits``: the reference over prompt + generated[:-1]; row prompt_len - 1 + i predicts token i."""
    choices = ref_logits[prompt_len - 1:prompt_len - 1 + len(generated)].argmax(-1)
    differ = np.nonzero(choices != np.asarray(generated))[0]
    return int(differ[0]) if differ.size else len(generated)


def compare(reference: Reference, art: ArtifactOutputs, bounds: ValidationBounds, log=print) -> Gate:
    t0 = time.perf_counter()
    # every sequence the reference must score, in one call (a layered reference loads each layer once)
    names = [name for name, _ in PROMPTS]
    seqs = [art.ids[n] for n in names] + [art.gen_prompt[n] + art.generated[n][:-1] for n in names]
    ref_logits = dict(zip([("text", n) for n in names] + [("greedy", n) for n in names], reference.logits_many(seqs)))
    prompts: list[PromptResult] = []
    for name in names:
        prefill, gen = art.prefill[name], art.generated[name]
        c = compare_logits(ref_logits["text", name][prefill - 1:], art.logits[name], art.ids[name][prefill:])
        prompt = art.gen_prompt[name]
        p = PromptResult(name, c, greedy_agreement(ref_logits["greedy", name], len(prompt), gen) if gen else 0,
                         len(gen), art.tokenizer_match[name])
        prompts.append(p)
        log(f"    {name:8s} positions {c.positions:3d}  max|dlogit| {c.max_abs_logit_diff:.2e}  "
            f"KL mean {c.kl_mean:.2e}  top1 {c.top1_agreement:.1%}  greedy {p.greedy_match}/{p.greedy_tokens}")
    allkl = np.concatenate([p.logits.kl for p in prompts])
    summary = GateSummary(
        positions=int(allkl.size),
        max_abs_logit_diff=max(p.logits.max_abs_logit_diff for p in prompts),
        kl_mean=float(allkl.mean()),
        kl_p90=float(np.percentile(allkl, 90)),
        kl_p99=float(np.percentile(allkl, 99)),
        perplexity=float(np.exp(np.concatenate([p.logits.nll_test for p in prompts]).mean())),
        reference_perplexity=float(np.exp(np.concatenate([p.logits.nll_ref for p in prompts]).mean())),
        kl_max=float(allkl.max()),
        top1_agreement=float(np.mean([p.logits.top1_agreement for p in prompts])),
        # a continuation that ended at an end token the reference also chose matched all the way
        greedy_match_min=min(bounds.greedy_tokens if p.greedy_match == p.greedy_tokens > 0 else p.greedy_match
                             for p in prompts),
        tokenizer_match=all(p.tokenizer_match for p in prompts),
    )
    return Gate(_check(summary, bounds), bounds, summary, prompts, round(time.perf_counter() - t0, 2))


def validate_apart(open_engine: Callable[[], Any], model_path: Path, parameters: int, bounds: ValidationBounds,
                   log=print, quality: QualityBounds | None = None, quantized: Path | None = None,
                   loss_text: bool = True, fresh_process: bool | None = None) -> Validation:
    """The artifact's side first, then the reference's, never both in memory: the peak is the larger
    of the two. ``open_engine()`` gives the runtime Engine (nobody else may hold it, so that it is
    freed before the reference loads); the reference is whole or layer by layer (``open_reference``).

    An artifact with quantised weights is checked twice: the gate (``bounds``) against
    the parity reference, transformers computing with the artifact's own quantised weights; then what quantisation
    cost against the plain fp32 model on the built-in loss text (edgeqwen.quality.loss_text), reported
    and bounded only by ``quality``'s bounds if set. ``quantized``: the checkpoint an Olive PyTorch pass
    (GPTQ) quantised, whose values the artifact's repacked weights must be exactly. ``loss_text``
    False skips the loss (parity only), recorded as skipped; a bound on it is then refused.
    ``fresh_process``: run the reference side in a process of its own (edgeqwen.quality.fresh_process);
    None: when the model is too large for the whole-model reference."""
    if not loss_text and quality is not None and quality.max_kl_mean is not None:
        raise ValueError("a KL bound (--max-kl or the profile's [quality]) needs the quantisation loss; "
                         "drop --no-loss-text or the bound")
    t0 = time.perf_counter()
    large = not fits_whole(parameters)
    # a large model's texts are tokenized in a process of their own: transformers' tokenizer imports torch,
    # whose ~230 MB would stay resident in this process under the artifact's session (its load is the peak)
    texts = run_fresh(tokenized, Path(model_path), loss_text) if large else tokenized(Path(model_path), loss_text)
    engine = open_engine()
    provider, manifest, folder = engine.provider, engine.manifest, engine.folder
    outputs = run_artifact(engine, texts, bounds.greedy_tokens)
    quantised = artifact_weights(folder, manifest, model_path) is not None
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}-validation-", dir=folder.parent) as tmp:
        scored = quantised and loss_text
        loss_logits = run_artifact_loss(engine, texts.loss, Path(tmp), log) if scored else None
        del engine  # the model and its weights go with the last reference
        allocator.release()
        twin = _twin_outputs(folder, manifest, Path(tmp), texts, bounds, log) if quantised else None
        exact = twin or outputs
        log(f"    artifact side done in {time.perf_counter() - t0:.0f} s (peak RSS so far {peak_rss_mb()} MB)")
        job = ReferenceJob(Path(model_path), parameters, folder, manifest, quantised, exact, loss_logits, bounds,
                           quality, quantized)
        if fresh_process if fresh_process is not None else large:
            log("    the reference side runs in a process of its own")
            gate, name, check, loss = run_fresh(reference_side, job, log=log)
        else:
            gate, name, check, loss = reference_side(job, log=log)
        int8 = None
        if quantised and not scored:
            loss = LossSkipped("not scored (--no-loss-text): parity only")
            if exact is not outputs:
                int8 = int8_effect(exact, outputs)
    return Validation(gate, name, provider, round(time.perf_counter() - t0, 2), check, loss, int8)


@dataclass(frozen=True)
class ReferenceJob:
    """What the reference side needs from the artifact's (picklable: it may run in a process of its own)."""

    model_path: Path
    parameters: int
    folder: Path  # the artifact, whose quantised weights the parity reference computes with
    manifest: dict[str, Any]
    quantised: bool
    exact: ArtifactOutputs  # the prompts' outputs to compare: the twin's, or the artifact's own
    loss_logits: ArtifactLogits | None  # the artifact's loss-text logits on disk, when scored
    bounds: ValidationBounds
    quality: QualityBounds | None
    quantized: Path | None


def reference_side(job: ReferenceJob, log=print) -> tuple[Gate, str, WeightCheck | None, QuantizationLoss | None]:
    """The gate against the (parity) reference, then for a quantised artifact the weight check and the loss."""
    weights = artifact_weights(job.folder, job.manifest, job.model_path) if job.quantised else None
    if weights is not None:
        log("    parity: transformers with the artifact's own quantised weights")
    reference = open_reference(job.model_path, job.parameters, log, weights)
    gate = compare(reference, job.exact, job.bounds, log)
    name = type(reference).__name__ + (" with the artifact's weights" if weights else "")
    del reference
    allocator.release()
    check = loss = None
    if weights is not None:
        check, loss = _weights_and_loss(weights, job.model_path, job.parameters, job.quantized, job.loss_logits,
                                        job.quality, log)
    return gate, name, check, loss


def _twin_outputs(folder: Path, manifest: dict[str, Any], tmp: Path, texts: Texts, bounds: ValidationBounds,
                  log) -> ArtifactOutputs | None:
    """The prompts run on the artifact's fp32-compute twin (exact MatMulNBits), for the parity check."""
    twin = exact_compute_twin(folder, manifest, tmp / "twin")
    if twin is None:
        return None
    log("    the same artifact with fp32 compute in MatMulNBits (its twin), for the parity check")
    out = run_artifact(_engine(twin), texts, bounds.greedy_tokens)
    allocator.release()
    return out


def _weights_and_loss(weights: ArtifactWeights, model_path: Path, parameters: int, quantized: Path | None,
                      loss_logits: ArtifactLogits | None, quality: QualityBounds | None,
                      log) -> tuple[WeightCheck, QuantizationLoss | None]:
    """The weight check (a quantisation of the checkpoint, in steps) and the loss against fp32 (None when the
    loss text was not run)."""
    log("    weights: the artifact's quantised values against the checkpoint's, in quantisation steps")
    check = check_weights(weights, Path(model_path), quantized=quantized)
    if loss_logits is None:
        return check, None
    log(f"    quantisation loss: the fp32 checkpoint on the built-in text ({loss_logits.tokens} tokens)")
    loss = quantization_loss(compare_loss(open_reference(model_path, parameters, log), loss_logits),
                             quality or QualityBounds())
    return check, loss


def _engine(folder: Path):
    import warnings

    from edgeqwen.runtime.engine import Engine

    with warnings.catch_warnings():  # a DirectML artifact runs on the CPU provider here
        warnings.simplefilter("ignore", RuntimeWarning)
        return Engine(folder, verify="size")


def int8_effect(exact: ArtifactOutputs, shipped: ArtifactOutputs) -> Int8Effect:
    """What int8 activations in MatMulNBits change: the artifact against its fp32-compute twin."""
    kl = np.concatenate([per_token(exact.logits[n], shipped.logits[n], np.zeros(len(exact.logits[n]), np.int64))["kl"]
                         for n in exact.logits])
    agree = np.concatenate([exact.logits[n].argmax(-1) == shipped.logits[n].argmax(-1) for n in exact.logits])
    return Int8Effect(float(kl.mean()), float(np.percentile(kl, 99)), float(agree.mean()))


def artifact_weights(folder: Path, manifest: dict[str, Any], model_path: Path) -> ArtifactWeights | None:
    """The artifact's quantised weights, or None for a float artifact (checked against plain fp32)."""
    ops = {w["op"] for w in manifest.get("quantization", {}).get("weight_ops", [])}
    if not ops & {"MatMulNBits", "GatherBlockQuantized"}:
        return None
    return ArtifactWeights(folder, manifest, checkpoint_tensor_map(model_path))


def quantization_loss(cmp: dict[str, Any], q: QualityBounds) -> QuantizationLoss:
    """What quantisation cost against fp32: a figure to report; a failure only past the user's bounds."""
    s = cmp["summary"]
    failures = [f"quantisation loss {k} = {s[k]:.4g} nats, bound <= {b} (--max-kl / the profile's [quality])"
                for k, b in (("kl_mean", q.max_kl_mean), ("kl_p99", q.max_kl_p99)) if b is not None and s[k] > b]
    return QuantizationLoss(s, cmp["texts"], q, failures, s["kl_mean"] > q.warn_kl_mean)


def _check(s: GateSummary, b: ValidationBounds) -> list[str]:
    fails = []
    if not s.tokenizer_match:
        fails.append("artifact tokenizer gives different ids than the reference tokenizer")
    checks = [
        ("max_abs_logit_diff", b.max_abs_logit_diff, "<="),
        ("kl_mean", b.max_kl_mean, "<="),
        ("kl_p99", b.max_kl_p99, "<="),
        ("top1_agreement", b.min_top1_agreement, ">="),
        ("greedy_match_min", b.min_greedy_match, ">="),
    ]
    for key, bound, op in checks:
        if bound is None:
            continue
        v = getattr(s, key)
        ok = v <= bound if op == "<=" else v >= bound
        if not ok or (isinstance(v, float) and math.isnan(v)):
            fails.append(f"{key} = {v:.4g}, bound {op} {bound}")
    return fails
