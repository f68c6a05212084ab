"""What apps embed: load an artifact and stream tokens. Needs only numpy, onnxruntime,
onnxruntime-genai, tokenizers and jinja2; never torch, transformers or Olive.

    import edgeqwen.runtime as rt
    engine = rt.load("artifact-folder")
    for delta in engine.chat([{"role": "user", "content": "Hi"}], think=False):
        print(delta.text, end="", flush=True)
"""

from edgeqwen.errors import ArtifactError, ContextOverflow
from edgeqwen.runtime.engine import Engine, load
from edgeqwen.runtime.generate import Delta, Metrics, Result, Stream
from edgeqwen.runtime.sampling import SamplingParams

__all__ = ["ArtifactError", "ContextOverflow", "Delta", "Engine", "Metrics", "Result", "SamplingParams", "Stream", "load"]
