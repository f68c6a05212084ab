"""The fp32 transformers model an artifact is compared with (validation and quality reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

# The chat-templated validation text: one user turn, rendered by the checkpoint's own template.
CHAT_MESSAGES = [{"role": "user", "content": "Give me three tips for writing clear error messages."}]


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A validation text's ids; "CHAT" stands for the chat turn rendered by the checkpoint's template."""
    if text == "CHAT":
        kwargs = {"enable_thinking": False} if "enable_thinking" in (tokenizer.chat_template or "") else {}
        text = tokenizer.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True, **kwargs)
    return tokenizer(text, add_special_tokens=False).input_ids


def load_tokenizer(model_path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


# Above this many fp32 bytes the reference runs one decoder layer at a time (LayeredReference): the
# whole model would not leave room for anything else on a small machine, and a build's memory must
# not grow with the model (the 0.5B shape's validated cpu-int4 build peaks at 1.21 GB with it).
WHOLE_MODEL_LIMIT_BYTES = 1 * 2**30


def open_reference(model_path: str | Path, parameters: int, log=None, weights=None) -> Reference:
    """The whole transformers model when it is small, else the layer-by-layer one (same numerics;
    ``log`` gets its progress lines). ``weights``: an artifact's quantised weights to compute with
    instead of the checkpoint's (the parity reference, edgeqwen.quality.parity)."""
    if parameters * 4 <= WHOLE_MODEL_LIMIT_BYTES:
        return Reference(model_path, weights)
    from edgeqwen.quality.layered import LayeredReference

    return LayeredReference(model_path, log=log, weights=weights)


class Reference:
    """The transformers model in fp32 (bf16/fp16 checkpoints are upcast: the reference is exact math)."""

    def __init__(self, model_path: str | Path, weights=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
        if weights is not None:
            from edgeqwen.quality.parity import load_weights

            load_weights(torch, self.model, weights)

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
        pass per sequence, the lm_head per chunk (a long text's logits never all exist at once)."""
        torch = self.torch
        with torch.no_grad():
            for i, ids in enumerate(seqs):
                hidden = self.model.model(torch.tensor([ids])).last_hidden_state[0]  # [T, H]
                for a, b in split(len(ids)):
                    yield i, a, self.model.lm_head(hidden[a:b]).float().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                      attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long))
        return out[0, len(ids):].tolist()
