"""Train a small Qwen3-architecture model whose numbers mean something, offline, in minutes on 2 cores.

Random weights make perplexity and KL meaningless and their output is noise. This trains, with fixed
seeds, a ~4M-parameter Qwen3 (q/k norm, GQA, tied embeddings, Qwen3 chat template) and its own
byte-level BPE tokenizer on the CPython standard library's top-level modules, which every Python
installation carries. The last files (sorted by name) are held out as the evaluation text.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edgeqwen.corpus import HELD_OUT_FRACTION, read_texts, split_corpus
from edgeqwen.testmodels.chat_templates import QWEN3_THINKING, qwen35_template
from edgeqwen.testmodels.tokenizer_files import QWEN_PRETOKENIZE_PATTERN

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


@dataclass(frozen=True)
class TrainSpec:
    vocab: int = 4096
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 768
    seq_len: int = 256
    batch: int = 16
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 30
    seed: int = 1234
    eval_fraction: float = HELD_OUT_FRACTION
    max_positions: int = 1024
    max_train_chars: int | None = None  # tests train on a slice; None = every training file
    dtype: str = "bfloat16"  # of the saved weights (as Qwen ships them); training is fp32
    # "qwen3", or "qwen3_5": Qwen3.5's hybrid text model (Qwen3_5ForCausalLM: 3 of 4 layers Gated DeltaNet with
    # the linear-attention sizes below, every 4th gated full attention; offset RMSNorm)
    architecture: str = "qwen3"
    linear_key_heads: int = 2  # of the Gated DeltaNet layers (qwen3_5)
    linear_value_heads: int = 4
    linear_head_dim: int = 64


# The copy `edgeqwen demo` builds: committed, and regenerated bit for bit (same Python, same machine
# kind) by `python tools/train_small_qwen.py -o edgeqwen/testmodels/data/small-qwen3`.
DEFAULT_DIR = Path(__file__).resolve().parent / "data" / "small-qwen3"


def load_corpus(spec: TrainSpec) -> tuple[str, str, str]:
    """(train text, eval text, sha256 of both) from the stdlib's top-level modules."""
    train_files, held_files = split_corpus(spec.eval_fraction)
    train, held = read_texts(train_files), read_texts(held_files)
    if spec.max_train_chars is not None:
        train, held = train[: spec.max_train_chars], held[: max(2000, spec.max_train_chars // 20)]
    digest = hashlib.sha256((train + "\0" + held).encode()).hexdigest()
    return train, held, digest


def train_tokenizer(text: str, spec: TrainSpec):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab - len(SPECIALS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text[i:i + 100_000] for i in range(0, len(text), 100_000)], trainer)
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(t, special=t not in ("<think>", "</think>"), normalized=False) for t in SPECIALS])
    return tok


def train(out: Path, spec: TrainSpec = TrainSpec(), log: Callable[[str], None] = print) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(spec.seed)
    torch.use_deterministic_algorithms(True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    text, held, digest = load_corpus(spec)
    tok = train_tokenizer(text, spec)
    ids = np.array(tok.encode(text).ids, dtype=np.int64)
    eval_ids = np.array(tok.encode(held).ids, dtype=np.int64)
    log(f"corpus: {len(text) / 1e6:.1f} MB train ({len(ids)} tokens), {len(held) / 1e3:.0f} KB held out "
        f"({len(eval_ids)} tokens); tokenizer in {time.perf_counter() - t0:.0f}s")

    vocab = tok.get_vocab_size()
    specials = {t: tok.token_to_id(t) for t in SPECIALS}
    cfg = _config(spec, vocab, specials)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = np.random.default_rng(spec.seed)
    model.train()
    for step in range(spec.steps):
        lr = spec.lr * min(1.0, (step + 1) / spec.warmup) * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = gen.integers(0, len(ids) - spec.seq_len - 1, spec.batch)
        x = torch.from_numpy(np.stack([ids[s:s + spec.seq_len] for s in starts]))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == spec.steps - 1:
            log(f"step {step + 1}/{spec.steps}  loss {loss.item():.3f}  lr {lr:.2e}  "
                f"{time.perf_counter() - t0:.0f}s")
    model.eval()
    # The perplexity of the weights as saved: rounded to spec.dtype, computed in fp32 like the reference.
    model = model.to(getattr(torch, spec.dtype)).to(torch.float32)
    ppl = perplexity_torch(model, eval_ids, spec.seq_len * 2)
    log(f"held-out perplexity ({spec.dtype} weights, fp32 compute, windows of {spec.seq_len * 2}): {ppl:.2f}; "
        f"trained in {time.perf_counter() - t0:.0f}s")

    model.to(getattr(torch, spec.dtype)).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=[specials["<|im_end|>"], specials["<|endoftext|>"]],
                     pad_token_id=cfg.pad_token_id, do_sample=False).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": spec.max_positions,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None,
        "clean_up_tokenization_spaces": False, "chat_template": _chat_template(spec)}, indent=2))
    (out / "eval.txt").write_text(held, encoding="utf-8")
    info = {"spec": asdict(spec), "corpus_sha256": digest, "parameters": sum(p.numel() for p in model.parameters()),
            "eval_tokens": int(len(eval_ids)), "eval_perplexity_fp32": ppl}  # no timings: regenerated bit for bit
    (out / "edgeqwen_trained.json").write_text(json.dumps(info, indent=2))
    return info


def _chat_template(spec: TrainSpec) -> str:
    """Qwen3's thinking template, or Qwen3.5's (which, at this size, starts in non-thinking mode)."""
    return qwen35_template(thinking_default=False) if spec.architecture == "qwen3_5" else QWEN3_THINKING


def _config(spec: TrainSpec, vocab: int, specials: dict[str, int]):
    """The transformers config of the model to train (tied embeddings, the chat tokens' ids)."""
    from transformers import Qwen3Config

    sizes = dict(vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                 num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                 head_dim=spec.head_dim, max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
                 bos_token_id=specials["<|endoftext|>"], eos_token_id=specials["<|im_end|>"],
                 pad_token_id=specials["<|endoftext|>"], rms_norm_eps=1e-6)
    if spec.architecture == "qwen3":
        cfg = Qwen3Config(**sizes)
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        cfg.architectures = ["Qwen3ForCausalLM"]
        return cfg
    if spec.architecture != "qwen3_5":
        raise ValueError(f"cannot train architecture {spec.architecture!r}; qwen3 or qwen3_5")
    from transformers import Qwen3_5TextConfig

    kh, vh = spec.linear_key_heads, spec.linear_value_heads
    cfg = Qwen3_5TextConfig(**sizes, linear_num_key_heads=kh, linear_num_value_heads=vh,
                            linear_key_head_dim=spec.linear_head_dim, linear_value_head_dim=spec.linear_head_dim,
                            layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention"
                                         for i in range(spec.layers)])
    # Qwen3.5's rotary as published: a quarter of each head, interleaved multi-axis sections (text: equal axes)
    pairs = spec.head_dim // 8  # rotated pairs: a quarter of the head, halved
    hw = round(pairs * 11 / 32)  # the published split of 32 pairs, [11, 11, 10], scaled
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                           "mrope_interleaved": True, "mrope_section": [hw, hw, pairs - 2 * hw]}
    cfg.architectures = ["Qwen3_5ForCausalLM"]
    return cfg


def perplexity_torch(model, ids, window: int) -> float:
    """exp(mean NLL) over non-overlapping windows (every token but each window's first is scored)."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, window):
            chunk = torch.from_numpy(ids[s:s + window][None])
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk).logits[0, :-1].double()
            nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count)
