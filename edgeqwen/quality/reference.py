"""The fp32 transformers model an artifact is compared with (validation and quality reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The chat-templated validation text: one user turn, rendered by the checkpoint's own template.
CHAT_MESSAGES = [{"role": "user", "content": "Give me three tips for writing clear error messages."}]


class Reference:
    """The transformers model in fp32 (bf16/fp16 checkpoints are upcast: the reference is exact math)."""

    def __init__(self, model_path: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()

    def prompt_ids(self, name: str, text: str) -> list[int]:
        if text == "CHAT":  # the validation prompt that goes through the chat template
            kwargs = {"enable_thinking": False} if "enable_thinking" in (self.tokenizer.chat_template or "") else {}
            text = self.tokenizer.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True, **kwargs)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids]))
        return out.logits[0].float().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                      attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long))
        return out[0, len(ids):].tolist()
