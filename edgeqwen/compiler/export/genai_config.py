"""genai_config.json for a streamed graph: the fields onnxruntime-genai 0.14 reads, as its builder writes them."""

from __future__ import annotations

import json
from typing import Any

from edgeqwen.compiler.checkpoint import Checkpoint


def _token_ids(ckpt: Checkpoint) -> tuple[int, list[int], int]:
    gen_file = ckpt.path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    cfg = ckpt.config
    bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos = eos if isinstance(eos, list) else [eos]
    pad = gen.get("pad_token_id", cfg.get("pad_token_id", eos[0]))
    return bos, eos, pad


def genai_config(ckpt: Checkpoint, plan, shape) -> dict[str, Any]:
    bos, eos, pad = _token_ids(ckpt)
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if plan.layout == "split":
        inputs["position_ids"] = "position_ids"
    inputs |= {"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    providers = [] if plan.execution_provider == "cpu" else [{plan.execution_provider: {}}]
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": shape.positions,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": providers},
                "filename": "model.onnx",
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden,
                "inputs": inputs,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad,
            "type": ckpt.family,
            "vocab_size": shape.vocab,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": shape.positions, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0,
        },
    }
