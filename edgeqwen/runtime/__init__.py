"""What apps embed: load an artifact and stream tokens. Needs only numpy, onnxruntime,
onnxruntime-genai and tokenizers; never torch, transformers or Olive."""

from edgeqwen.runtime.engine import Engine, load

__all__ = ["Engine", "load"]
