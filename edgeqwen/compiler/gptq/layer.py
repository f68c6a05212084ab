"""One decoder layer as transformers builds it, its weights read from the checkpoint in fp32, and the
arguments transformers' model forward calls every layer with.

Olive's Gptq loads the whole model and captures, with a pre-hook on layer 0, what the model's forward
passes each layer (olive.passes.pytorch.quant_utils.get_layer_inputs_for_calibration): the hidden states
and the keyword arguments attention_mask, position_embeddings, position_ids, past_key_values, use_cache.
Here those arguments are computed the way Qwen2Model / Qwen3Model / Qwen3_5TextModel.forward computes them
(the same masking_utils calls, a mask per layer kind, the same rotary module), and the layer is the
architecture's own decoder layer class (the spec names it), so the arithmetic is the same operation for
operation: a Gated DeltaNet layer calibrates through transformers' own chunked delta rule.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
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

    config: Any  # transformers config of the language model (a composite config's text_config)
    layer_class: type  # e.g. Qwen2DecoderLayer
    kwargs: dict[str, Any]  # position_embeddings ([1, T, head_dim] cos, sin), position_ids, past_key_values, ...
    masks: dict[str, Any]  # attention_mask per token mixer: the causal mask, the recurrent layers' padding mask

    def arguments(self, mixer: str) -> dict[str, Any]:
        """The keyword arguments of a layer whose token mixer is ``mixer`` (as the text model's forward gives
        each layer the mask of its kind)."""
        return {"attention_mask": self.masks[mixer], **self.kwargs}


def transformers_config(checkpoint: Path) -> Any:
    """The language model's config as from_pretrained leaves it for Olive: SDPA attention, no KV cache
    (run_layerwise_quantization sets use_cache False)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint)).get_text_config()
    config._attn_implementation = ATTENTION
    config.use_cache = False
    return config


def _class(path: str) -> Any:
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


@torch.no_grad()
def layer_call(checkpoint: Path, spec: ModelSpec, tokens: int) -> LayerCall:
    """The arguments of every layer for windows of ``tokens`` tokens, as the model's forward makes them
    from input_ids [1, T] and an all-ones attention_mask [1, T] (Olive's calibration batches)."""
    from edgeqwen.quality.layered import layer_masks

    config = transformers_config(checkpoint)
    # only dtype and shape of the embeddings matter to the mask and the rotary tables: [1, T, H] fp32
    embeds = torch.zeros(1, tokens, spec.hidden)
    position_ids = torch.arange(tokens).unsqueeze(0)  # [1, T]
    masks = layer_masks(config, embeds, position_ids, {k.mixer for k in spec.layer_kinds},
                        attention_mask=torch.ones(1, tokens, dtype=torch.long))  # None for SDPA without padding
    cos_sin = _class(spec.rotary_module)(config=config)(embeds, position_ids)  # ([1, T, rotary], [1, T, rotary])
    kwargs = {"position_embeddings": cos_sin, "position_ids": position_ids, "past_key_values": None,
              "use_cache": False}
    return LayerCall(config, _class(spec.decoder_layer), kwargs, masks)


def layer_tensor_names(names: TensorMap, i: int) -> list[str]:
    """Every checkpoint tensor of layer ``i`` (norms, projections, biases, q/k norms, Gated DeltaNet's conv,
    decay and gated norm where present)."""
    return names.layers[i].names()


def read_fp32(src: CheckpointTensors, name: str) -> torch.Tensor:
    """A checkpoint tensor as a fresh fp32 torch tensor (bf16/fp16 widened exactly)."""
    return torch.from_numpy(src.rows(name)).clone()  # own allocation: the read buffer is not kept


@torch.no_grad()
def build_layer(call: LayerCall, src: CheckpointTensors, names: TensorMap, i: int) -> torch.nn.Module:
    """Decoder layer ``i`` in fp32 with the checkpoint's weights. Built on the meta device (no random
    initialisation of weights about to be replaced), then every parameter assigned from the checkpoint."""
    with torch.device("meta"):
        layer = call.layer_class(call.config, i)
    state = {names.inner_path(i, n): read_fp32(src, n) for n in layer_tensor_names(names, i)}
    layer.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"layer {i}: {left} have no checkpoint tensor")
    return layer.eval()
