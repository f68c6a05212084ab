"""A model's recommended decoding, as a typed record (stdlib only).

Parsed from the checkpoint by edgeqwen.model.generation, written into the artifact's runtime contract
(edgeqwen.artifact) and read back by the runtime, the CLI and the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingDefaults:
    """The decoding a model asks for, recorded at build from its generation_config.json (or its model
    card, ``source`` says which); the runtime, the CLI and the server start from these and a flag or a
    request field overrides each. The neutral values (temperature 0 = greedy, top_p 1, top_k 0 = off,
    min_p 0, penalties 1 and 0) mean the model sets nothing."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    source: str = ""

    @classmethod
    def from_dict(cls, raw: Any) -> "SamplingDefaults":
        """Raises TypeError or ValueError on a malformed table."""
        if not isinstance(raw, dict):
            raise TypeError(f"not a table: {raw!r}")
        out = cls(**raw)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty"):
            v = getattr(out, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"{name} must be a number, got {v!r}")
        if not isinstance(out.top_k, int) or isinstance(out.top_k, bool) or out.top_k < 0:
            raise TypeError(f"top_k must be an integer >= 0, got {out.top_k!r}")
        if out.temperature < 0 or not 0 < out.top_p <= 1 or not 0 <= out.min_p <= 1 or out.repetition_penalty <= 0:
            raise ValueError(f"values out of range: {raw!r}")
        return out

    def describe(self) -> str:
        """One readable line: "temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05" or "greedy"."""
        parts = ["greedy"] if self.temperature == 0 else [f"temperature {self.temperature:g}"]
        if self.temperature:
            parts += [f"top_p {self.top_p:g}"] if self.top_p < 1 else []
            parts += [f"top_k {self.top_k}"] if self.top_k else []
            parts += [f"min_p {self.min_p:g}"] if self.min_p else []
        parts += [f"repetition_penalty {self.repetition_penalty:g}"] if self.repetition_penalty != 1 else []
        parts += [f"presence_penalty {self.presence_penalty:g}"] if self.presence_penalty else []
        return ", ".join(parts)
