"""genai_config.json for a streamed graph: the fields onnxruntime-genai 0.14 reads, as its builder writes them."""

from __future__ import annotations

from typing import Any

from edgeqwen.compiler.checkpoint import Checkpoint, generation_token_ids


def genai_config(ckpt: Checkpoint, plan, shape) -> dict[str, Any]:
    bos, eos, pad = generation_token_ids(ckpt)
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if plan.layout == "split" or shape.rope.sections:  # the split layout's rotary, or mRoPE's [3, B, S]
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
