"""An fp32 reference that holds one decoder layer at a time, for checkpoints too large to hold whole.

A 7B checkpoint in fp32 is 30 GB; on a 24 GiB machine ``Reference`` cannot load it. This runs the
same transformers modules, built on the meta device (no memory), and materialises each decoder
layer's weights from the memory-mapped safetensors just before it runs, upcast to fp32, then drops
them. Peak memory is one layer plus the embedding table plus activations. It has ``Reference``'s
interface (``tokenizer``, ``prompt_ids``, ``logits``, ``greedy``) and the same numerics: the
layers, norms, rotary tables and causal mask are transformers' own.

Greedy decoding reruns the whole sequence per token (every layer is reloaded each time), so it is
slow on large models: it is for validation, not for generating.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeqwen.quality.reference import Reference

# The output matrix is read a block of rows at a time, at most this many bytes of fp32: 8,192 rows at
# Qwen3.5-9B's hidden 4096 (the whole matrix there is 4 GB of fp32).
HEAD_BLOCK_BYTES = 128 << 20


class LayeredReference(Reference):
    def __init__(self, model_path: str | Path, log: Callable[[str], None] | None = None, weights=None) -> None:
        # builds on meta; Reference's loading is not used. ``log``: a progress line per layer pass
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.torch = torch
        self.path = self.model_path = Path(model_path)  # the tokenizer: Reference's, loaded on first use
        self.config = AutoConfig.from_pretrained(str(model_path))
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32).eval()
        # Rotary tables are buffers computed at construction: rebuild them on the CPU for real.
        rotary = self.model.model.rotary_emb
        self.model.model.rotary_emb = type(rotary)(config=self.model.config)
        from edgeqwen.safetensors_io import CheckpointTensors

        # every shard opened once (headers parsed once) for the reference's life; reads are plain reads
        self.src = CheckpointTensors(self.path, _shards(self.path))
        from edgeqwen.model.spec import read_spec
        from edgeqwen.model.tensors import tensor_map

        self.spec = read_spec(self.path, set(self.src.where))
        self.names = tensor_map(self.spec)  # weights by role: module parameter -> checkpoint tensor
        if weights is not None:  # the artifact's dequantised weights in place of the checkpoint's
            from edgeqwen.quality.parity import Overlay

            self.src = Overlay(self.src, weights)
        self.log = log
        self.eos = set(self.spec.generation.eos_token_ids)  # as generate() stops on them

    # -- weights ------------------------------------------------------------------------------------
    def _materialise(self, module, prefix: str) -> None:
        """Give ``module`` (the transformers module at path ``prefix``) its weights, each read from the
        checkpoint tensor the tensor map names for its parameter, with plain reads (a memory map would keep
        every page it touched resident) and upcast to fp32 (exact for bf16 and fp16)."""
        torch = self.torch
        module.to_empty(device="cpu")
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(torch.from_numpy(self.src.rows(self.names.checkpoint_name(prefix + name))))

    def _release(self, module) -> None:
        module.to("meta")

    # -- forward ------------------------------------------------------------------------------------
    def _embed(self, ids: list[int]):
        """[1, T, H]: the rows of the embedding table the ids name, not the table (2.2 GB of fp32 on a 7B)."""
        torch = self.torch
        rows = {i: self.src.rows(self.names.embed, i, i + 1)[0] for i in sorted(set(ids))}
        return torch.from_numpy(np.stack([rows[i] for i in ids]))[None]

    def _hidden_many(self, seqs: list[list[int]]) -> list:
        """Final-norm hidden states [1, T, H] of each sequence, each decoder layer loaded once for all
        of them (loading, not compute, is what a layer costs here: 15 GB of reads per pass on a 7B)."""
        torch, inner = self.torch, self.model.model
        kinds = [k.mixer for k in self.spec.layer_kinds]
        with torch.no_grad():
            xs = [self._embed(ids) for ids in seqs]
            ctx = []
            for ids, x in zip(seqs, xs):
                position_ids = torch.arange(len(ids)).unsqueeze(0)
                masks = layer_masks(self.model.config, x, position_ids, set(kinds))
                ctx.append((position_ids, masks, inner.rotary_emb(x, position_ids)))
            t0, n = time.perf_counter(), len(inner.layers)
            for i, layer in enumerate(inner.layers):
                self._materialise(layer, f"model.layers.{i}.")
                for j, (position_ids, masks, rope) in enumerate(ctx):
                    out = layer(xs[j], attention_mask=masks[kinds[i]], position_ids=position_ids,
                                position_embeddings=rope)
                    xs[j] = out[0] if isinstance(out, tuple) else out
                self._release(layer)
                if self.log:
                    elapsed = time.perf_counter() - t0
                    self.log(f"    reference layer {i + 1}/{n} ({len(seqs)} sequences), {elapsed:.0f} s elapsed, "
                             f"~{elapsed / (i + 1) * (n - i - 1):.0f} s left")
            self._materialise(inner.norm, "model.norm.")
            xs = [inner.norm(x) for x in xs]
            self._release(inner.norm)
        return xs

    def logits_many(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """[T_i, V] for each sequence (a tied checkpoint has no lm_head.weight: the embedding table is
        the output matrix)."""
        return [self._head(x[0]) for x in self._hidden_many(seqs)]

    def logits_chunks(self, seqs: list[list[int]], split: Callable[[int], list[tuple[int, int]]]
                      ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(sequence index, a, logits [b - a, V]) for each [a, b) of ``split(len(seq))``: the layers once
        for all sequences, then the lm_head read once per chunk (a long text's logits never all exist)."""
        xs = [x[0] for x in self._hidden_many(seqs)]  # [T_i, H] each
        for i, x in enumerate(xs):
            for a, b in split(x.shape[0]):
                yield i, a, self._head(x[a:b])

    def _head(self, x) -> np.ndarray:
        """[T, V] logits of hidden rows ``x`` [T, H], the output matrix one block of rows at a time."""
        torch, src = self.torch, self.src
        key = self.names.output_matrix(src)
        vocab, hidden = src.shape(key)
        step = max(1024, HEAD_BLOCK_BYTES // (4 * hidden))
        out = np.empty((x.shape[0], vocab), dtype=np.float32)
        with torch.no_grad():
            for v0 in range(0, vocab, step):
                w = torch.from_numpy(src.rows(key, v0, min(vocab, v0 + step)))  # [rows, H]
                out[:, v0:v0 + w.shape[0]] = torch.nn.functional.linear(x, w).numpy()
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.logits_many([ids])[0]

    def greedy(self, ids: list[int], n: int) -> list[int]:
        seq, out = list(ids), []
        for _ in range(n):
            nxt = int(self.logits(seq)[-1].argmax())
            out.append(nxt)
            seq.append(nxt)
            if nxt in self.eos:
                break
        return out


def layer_masks(config, x, position_ids, kinds: set[str], attention_mask=None) -> dict:
    """Each layer kind's attention mask as the text model builds it from ``attention_mask`` (None, or a
    [1, T] mask of ones): the causal mask for full attention, the recurrent layers' padding mask (None
    without padding) for Gated DeltaNet. Also GPTQ's calibration calls (edgeqwen.compiler.gptq.layer)."""
    from transformers.masking_utils import create_causal_mask

    args = dict(config=config, inputs_embeds=x, attention_mask=attention_mask, past_key_values=None,
                position_ids=position_ids)
    out = {"full_attention": create_causal_mask(**args)}
    if "linear_attention" in kinds:
        from transformers.masking_utils import create_recurrent_attention_mask

        out["linear_attention"] = create_recurrent_attention_mask(**args)
    return out


def _shards(folder: Path) -> list[str]:
    """The checkpoint's safetensors files: those its index names, else every one in the folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return sorted(p.name for p in folder.glob("*.safetensors"))
