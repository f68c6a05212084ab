"""Streaming graph writers: a checkpoint becomes an ONNX graph one tensor at a time.

``genai``: the dynamic-KV decoder onnxruntime-genai loads (GroupQueryAttention with past/present,
MatMulNBits or float MatMuls, last-position lm_head), written without ever holding the model: each
weight is read from the safetensors shards in blocks of rows, converted or quantised, and written
into the graph's external data file at its final offset. Memory is one block plus one layer's
norms, whatever the model's size.
"""
