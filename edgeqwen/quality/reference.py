"""The fp32 transformers model an artifact is compared with (validation and quality reports)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeqwen.model.tensors import TensorMap

# The chat-templated validation text: one user turn, rendered by the checkpoint's own template.
CHAT_MESSAGES = [{"role": "user", "content": "Give me three tips for writing clear error messages."}]


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A validation text's ids; "CHAT" stands for the chat turn rendered by the checkpoint's template."""
    if text == "CHAT":
        kwargs = {"enable_thinking": False} if "enable_thinking" in (tokenizer.chat_template or "") else {}
        text = tokenizer.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True, **kwargs)
    return tokenizer(text, add_special_tokens=False).input_ids


def load_tokenizer(model_path: str | Path):
    """The checkpoint's transformers tokenizer, loaded once per process for each version of its files
    (2.5-5 s for a 151,936-token vocabulary, and a validation uses it up to three times: the artifact
    side, the parity reference, the fp32 reference). It is only read: encoding and chat templates."""
    folder = Path(model_path).resolve()
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.glob("*"))
                  if p.is_file() and (p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges",
                                                         "chat_template", "added_tokens"))))
    return _cached_tokenizer(str(folder), stamp)


def forget_tokenizers() -> None:
    """Let the cached tokenizers go (the next load_tokenizer reads the files again)."""
    _cached_tokenizer.cache_clear()


@lru_cache(maxsize=4)
def _cached_tokenizer(folder: str, stamp: tuple):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# Above this many fp32 bytes the reference runs one decoder layer at a time (LayeredReference): the
# whole model would not leave room for anything else on a small machine, and a build's memory must
# not grow with the model (the 0.5B shape's validated cpu-int4 build peaks at 1.21 GB with it).
WHOLE_MODEL_LIMIT_BYTES = 1 * 2**30


def checkpoint_tensor_map(model_path: str | Path) -> TensorMap:
    """The tensor map of the checkpoint folder a reference computes from (edgeqwen.model)."""
    from edgeqwen.model.spec import read_spec
    from edgeqwen.model.tensors import tensor_map
    from edgeqwen.quality.layered import _shards
    from edgeqwen.safetensors_io import CheckpointTensors

    with CheckpointTensors(Path(model_path), _shards(Path(model_path))) as src:
        return tensor_map(read_spec(Path(model_path), set(src.where)))


def fits_whole(parameters: int) -> bool:
    """Whether the reference holds the whole model in fp32 (else one layer at a time)."""
    return parameters * 4 <= WHOLE_MODEL_LIMIT_BYTES


def open_reference(model_path: str | Path, parameters: int, log=None, weights=None) -> Reference:
    """The whole transformers model when it is small, else the layer-by-layer one (same numerics;
    ``log`` gets its progress lines). ``weights``: an artifact's quantised weights to compute with
    instead of the checkpoint's (the parity reference, edgeqwen.quality.parity)."""
    if fits_whole(parameters):
        return Reference(model_path, weights)
    from edgeqwen.quality.layered import LayeredReference

    return LayeredReference(model_path, log=log, weights=weights)


class Reference:
    """The transformers model in fp32 (bf16/fp16 checkpoints are upcast: the reference is exact math)."""

    def __init__(self, model_path: str | Path, weights=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model_path = Path(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
        if weights is not None:
            from edgeqwen.quality.parity import load_weights

            load_weights(torch, self.model, weights, checkpoint_tensor_map(model_path))

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer, loaded on first use: validation feeds token ids, and at Qwen3.5's
        248,320-token vocabulary a tokenizer holds ~600 MB beside the model."""
        return load_tokenizer(self.model_path)

    def prompt_ids(self, name: str, text: str) -> list[int]:
        return prompt_ids(self.tokenizer, text)

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids]))
        return out.logits[0].float().numpy()

    def logits_many(self, seqs: list[list[int]]) -> list[np.ndarray]:
        return [self.logits(ids) for ids in seqs]

    def logits_chunks(self, seqs: list[list[int]], split: Callable[[int], list[tuple[int, int]]]
                      ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(sequence index, a, logits [b - a, V]) for each [a, b) of ``split(len(seq))``: one forward
        pass per sequence, the lm_head per chunk (a long text's logits never all exist at once). Each
        chunk's logits are valid until the next is asked for: they share one buffer (a fresh [512, V]
        array per chunk costs more in first-touch page faults than the matmul that fills it)."""
        torch = self.torch
        head = self.model.lm_head
        buffer = None
        with torch.no_grad():
            for i, ids in enumerate(seqs):
                hidden = self.model.model(torch.tensor([ids])).last_hidden_state[0]  # [T, H]
                for a, b in split(len(ids)):
                    if head.bias is not None or hidden.dtype != torch.float32:
                        yield i, a, head(hidden[a:b]).float().numpy()
                        continue
                    if buffer is None or buffer.shape[0] < b - a:
                        buffer = torch.empty((b - a, head.weight.shape[0]), dtype=torch.float32)
                    yield i, a, torch.mm(hidden[a:b], head.weight.t(), out=buffer[:b - a]).numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                      repetition_penalty=1.0,  # plain argmax, whatever generation_config asks
                                     
                                      attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long))
        return out[0, len(ids):].tolist()
