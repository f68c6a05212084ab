"""GPTQ layer by layer without holding the model: the cpu-int4 profiles' Gptq step.

Olive's Gptq pass loads the whole transformers model (about 6.6 bytes a parameter at its peak); this runs
the same algorithm, with Olive's own solver and packer, on one decoder layer at a time built from the
checkpoint, and writes Olive's quantised format shard by shard. Its memory is one fp32 layer, that
layer's Hessians and the calibration hidden states (edgeqwen.build_memory): not the model's size.
On a float32 checkpoint the packed tensors are Olive's bit for bit (tests/test_gptq_layerwise.py).

  options   the step's options (Olive's names and defaults) and the quantization_config Olive saves
  layer     one transformers decoder layer from the checkpoint, and the arguments every layer is called with
  hessian   one Hessian per distinct input (q/k/v, o, gate/up, down), Olive's accumulation
  solve     Olive's GPTQ solve and QuantLinear packing on one linear layer
  writer    the output checkpoint, shard by shard
  run       the loop: embed the windows, then per layer calibrate, solve, write, forward
"""

from edgeqwen.compiler.gptq.options import GptqOptions
from edgeqwen.compiler.gptq.run import quantize

__all__ = ["GptqOptions", "quantize"]
