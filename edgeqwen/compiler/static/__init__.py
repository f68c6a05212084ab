"""Static-shape decoder graphs for accelerators that cannot take dynamic shapes (Android NNAPI).

Written directly with onnx.helper from the checkpoint's weights, in plain ai.onnx ops NNAPI has:
2-D Gemm with constant weights, Gather, ReduceMean, Softmax, batched MatMul, Concat, Transpose,
Reshape. Two graphs share one calling convention: a prefill graph over a fixed chunk of C tokens and
a 1-token decode graph; both read a KV cache of fixed length S that the runtime owns.
"""
