"""Incremental detokenisation: text deltas that never split a multi-byte character.

Byte-level BPE tokens can end inside a UTF-8 sequence (one emoji is often 2-3 tokens). Decoding
the whole output each step is quadratic, so, as vLLM does, only a short window of recent ids is
decoded and a delta is released once it no longer ends in U+FFFD.
"""

from __future__ import annotations


class IncrementalDecoder:
    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # ids before this are already released as text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=False)
        full_text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=False)
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            delta = full_text[len(prefix_text):]
            self.prefix, self.read = self.read, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=False)
        full_text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=False)
        self.prefix = self.read = len(self.ids)
        return full_text[len(prefix_text):]
