"""How a checkpoint generates: its token ids (bos, eos, pad) and its recommended sampling, read the way
transformers reads them (``generation_config.json`` first, then ``config.json``).

Stdlib only. Every consumer (the graph's genai_config.json, the manifest's runtime section, the static
flow, the planner) reads these records instead of picking keys out of the config files itself: a
checkpoint whose config.json has no ``pad_token_id`` (Qwen2.5-0.5B-Instruct's) or writes it as null
(anything saved by transformers 5) once broke every build because one reader looked in config.json only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen.model.sampling import SamplingDefaults

GENERATION_CONFIG = "generation_config.json"

# transformers' own values for a sampling field a generation_config.json leaves out
# (GenerationConfig._get_default_generation_params): a checkpoint that says do_sample true and nothing
# else samples at temperature 1 with top-k 50 there, so it does here.
_TRANSFORMERS_SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0}

# Qwen3's model card gives two settings: thinking (temperature 0.6, top_p 0.95, top_k 20, min_p 0: what
# its generation_config.json carries) and non-thinking (0.7 / 0.8 / 20 / 0), which no config file
# carries. The non-thinking one is applied only to a checkpoint that carries Qwen's thinking values
# unchanged: a fine-tune that chose its own sampling keeps it in both modes.
_QWEN3_THINKING = SamplingDefaults(temperature=0.6, top_p=0.95, top_k=20, source="")
_QWEN3_NON_THINKING = SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0,
                                       source="Qwen3 model card (non-thinking mode)")


@dataclass(frozen=True)
class GenerationSettings:
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # in the file's order (genai_config keeps it)
    pad_token_id: int | None  # None only when the checkpoint names neither a pad nor an end token
    pad_source: str  # "generation_config.json", "config.json", "first end token" or "none"
    sampling: SamplingDefaults  # plain completion, and chat in the template's default mode
    sampling_non_thinking: SamplingDefaults | None  # chat with thinking off, where it differs


def read_json(path: Path) -> dict[str, Any]:
    """A config file's table; {} when the file is absent (generation_config.json is optional)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def generation_settings(config: dict[str, Any], generation: dict[str, Any], family: str,
                        thinking: bool) -> GenerationSettings:
    """``config`` / ``generation``: the parsed config.json and generation_config.json ({} if absent)."""

    def pick(key: str) -> Any:
        return generation[key] if generation.get(key) is not None else config.get(key)

    eos = pick("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else () if eos is None else (eos,)
    if generation.get("pad_token_id") is not None:
        pad, pad_source = generation["pad_token_id"], GENERATION_CONFIG
    elif config.get("pad_token_id") is not None:
        pad, pad_source = config["pad_token_id"], "config.json"
    elif eos_ids:
        pad, pad_source = eos_ids[0], "first end token"
    else:
        pad, pad_source = None, "none"
    sampling = sampling_defaults(generation)
    non_thinking = None
    if family == "qwen3" and thinking and _same_sampling(sampling, _QWEN3_THINKING):
        non_thinking = _QWEN3_NON_THINKING
    return GenerationSettings(pick("bos_token_id"), eos_ids, pad, pad_source, sampling, non_thinking)


def sampling_defaults(generation: dict[str, Any]) -> SamplingDefaults:
    """The decoding a generation_config.json asks for, as transformers' generate() would run it:
    greedy unless ``do_sample`` is true (the repetition penalty applies either way)."""
    if not generation:
        return SamplingDefaults(source="none (no generation_config.json): greedy")

    def value(key: str, kind: type) -> Any:
        v = generation.get(key)
        return _TRANSFORMERS_SAMPLING.get(key) if v is None else kind(v)

    rep = generation.get("repetition_penalty")
    rep = 1.0 if rep is None else float(rep)
    if not generation.get("do_sample"):
        return SamplingDefaults(repetition_penalty=rep, source=f"{GENERATION_CONFIG} (do_sample false: greedy)")
    return SamplingDefaults(temperature=value("temperature", float), top_p=value("top_p", float),
                            top_k=value("top_k", int), min_p=value("min_p", float), repetition_penalty=rep,
                            source=GENERATION_CONFIG)


def _same_sampling(a: SamplingDefaults, b: SamplingDefaults) -> bool:
    return (a.temperature, a.top_p, a.top_k, a.min_p) == (b.temperature, b.top_p, b.top_k, b.min_p)


def read_generation_settings(folder: Path, config: dict[str, Any], family: str, thinking: bool) -> GenerationSettings:
    return generation_settings(config, read_json(Path(folder) / GENERATION_CONFIG), family, thinking)
