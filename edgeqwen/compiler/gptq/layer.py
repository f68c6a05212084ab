"""One decoder layer as transformers builds it, its weights read from the checkpoint in fp32, and the
arguments transformers' model forward calls every layer with.

Olive's Gptq loads the whole model and captures, with a pre-hook on layer 0, what the model's forward
passes each layer (olive.passes.pytorch.quant_utils.get_layer_inputs_for_calibration): the hidden states
and the keyword arguments attention_mask, position_embeddings, position_ids, past_key_values, use_cache.
Here those arguments are computed the way Qwen2Model / Qwen3Model.forward computes them (the same
masking_utils call, the same rotary module), and the layer is the model class's own decoder layer class,
so the arithmetic is the same operation for operation.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from edgeqwen.model.spec import ModelSpec
from edgeqwen.model.tensors import TensorMap
from edgeqwen.safetensors_io import CheckpointTensors

# transformers' from_pretrained picks SDPA on CPU; a bare config says nothing (and would run eager attention)
ATTENTION = "sdpa"


@dataclass(frozen=True)
class LayerCall:
    """What every decoder layer is called with besides its hidden states, the same for every calibration
    window (all are ``tokens`` long, no padding)."""

    config: Any  # transformers PretrainedConfig of the checkpoint
    layer_class: type  # e.g. Qwen2DecoderLayer
    kwargs: dict[str, Any]  # attention_mask, position_embeddings ([1, T, head_dim] cos, sin), position_ids, ...


def transformers_config(checkpoint: Path) -> Any:
    """The checkpoint's config as from_pretrained leaves it for Olive: SDPA attention, no KV cache
    (run_layerwise_quantization sets use_cache False)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint))
    config._attn_implementation = ATTENTION
    config.use_cache = False
    return config


def decoder_layer_class(spec: ModelSpec) -> type:
    """The architecture's decoder layer class: the one module its model class may not split
    (``_no_split_modules``), from the model class's own module."""
    import transformers

    model_class = getattr(transformers, spec.architecture)
    (name,) = model_class._no_split_modules
    return getattr(sys.modules[model_class.__module__], name)


def rotary_module(spec: ModelSpec, config: Any) -> torch.nn.Module:
    module, cls = spec.rotary_module.split(":")
    return getattr(importlib.import_module(module), cls)(config=config)


@torch.no_grad()
def layer_call(checkpoint: Path, spec: ModelSpec, tokens: int) -> LayerCall:
    """The arguments of every layer for windows of ``tokens`` tokens, as the model's forward makes them
    from input_ids [1, T] and an all-ones attention_mask [1, T] (Olive's calibration batches)."""
    from transformers.masking_utils import create_causal_mask

    config = transformers_config(checkpoint)
    # only dtype and shape of the embeddings matter to the mask and the rotary tables: [1, T, H] fp32
    embeds = torch.zeros(1, tokens, spec.hidden)
    position_ids = torch.arange(tokens).unsqueeze(0)  # [1, T]
    mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=torch.ones(1, tokens, dtype=torch.long),
                              past_key_values=None, position_ids=position_ids)  # None for SDPA without padding
    cos_sin = rotary_module(spec, config)(embeds, position_ids)  # ([1, T, head_dim], [1, T, head_dim])
    kwargs = {"attention_mask": mask, "position_embeddings": cos_sin, "position_ids": position_ids,
              "past_key_values": None, "use_cache": False}
    return LayerCall(config, decoder_layer_class(spec), kwargs)


def layer_tensor_names(names: TensorMap, i: int) -> list[str]:
    """Every checkpoint tensor of layer ``i`` (norms, projections, biases, q/k norms where present)."""
    t = names.layer(i)
    return [getattr(t, f.name) for f in fields(t) if getattr(t, f.name) is not None]


def read_fp32(src: CheckpointTensors, name: str) -> torch.Tensor:
    """A checkpoint tensor as a fresh fp32 torch tensor (bf16/fp16 widened exactly)."""
    return torch.from_numpy(src.rows(name)).clone()  # own allocation: the read buffer is not kept


@torch.no_grad()
def build_layer(call: LayerCall, src: CheckpointTensors, names: TensorMap, i: int) -> torch.nn.Module:
    """Decoder layer ``i`` in fp32 with the checkpoint's weights. Built on the meta device (no random
    initialisation of weights about to be replaced), then every parameter assigned from the checkpoint."""
    with torch.device("meta"):
        layer = call.layer_class(call.config, i)
    prefix = f"{names.layer_prefix}{i}."
    state = {names.parameter(n).removeprefix(prefix): read_fp32(src, n) for n in layer_tensor_names(names, i)}
    layer.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"layer {i}: {left} have no checkpoint tensor")
    return layer.eval()
