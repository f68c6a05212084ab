"""GPTQ layer by layer without holding the model: the cpu-int4 profiles' Gptq step.

Olive's Gptq pass loads the whole transformers model (about 6.6 bytes a parameter at its peak); this runs
the same algorithm, with Olive's packer (and its solver, or one written for the CPU), on one decoder layer
at a time built from the checkpoint, and writes Olive's quantised format shard by shard. Its memory is one fp32 layer, that
layer's Hessians and the calibration hidden states (edgeqwen.build_memory): not the model's size.
The step's ``arithmetic``: "olive" calls Olive's own accumulation and solver (on a float32 checkpoint the
packed tensors are Olive's bit for bit, tests/test_gptq_layerwise.py); "fast-fp32" runs the same algorithm
written for the CPU (own_solve: the transposed solve, one inverse factor per input; symmetric Hessian
products), its sums in another order (GPTQ's error feedback turns a flipped rounding into a few other codes:
96-100 % of the fixtures' codes are Olive's); "fast", the default, also multiplies the calibration forwards'
linear layers in bf16 where the CPU has bf16 dot products (precision), as GPU GPTQ runs in half precision.

  options   the step's options (Olive's names and defaults) and the quantization_config Olive saves
  layer     one transformers decoder layer from the checkpoint, and the arguments every layer is called with
  hessian   one Hessian per distinct input (q/k/v, o, gate/up, down), Olive's accumulation or the symmetric one
  solve     Olive's GPTQ solve and QuantLinear packing on one linear layer
  own_solve the same solve on the transposed weight, one inverse-Hessian factor per input group
  precision the calibration forwards' matmul dtype (bf16 where the CPU has it, for "fast")
  writer    the output checkpoint, shard by shard
  run       the loop: embed the windows, then per layer calibrate, solve, write, forward
"""

from edgeqwen.compiler.gptq.options import GptqOptions
from edgeqwen.compiler.gptq.run import quantize

__all__ = ["GptqOptions", "quantize"]
