"""Assemble the artifact folder from Olive's output: graph (after our passes), configs, tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgeqwen.artifact import RuntimeSpec
from edgeqwen.compiler.checkpoint import Checkpoint, generation_settings_of
from edgeqwen.targets import TargetProfile

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json")


def save_graph(model, folder: Path) -> None:
    import onnx

    # Weights always in one external file next to the graph: genai memory-maps it, and the proto
    # stays far below protobuf's 2 GB limit whatever the model size.
    onnx.save_model(model, str(folder / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)
    # No onnx.checker here: it rejects onnxruntime's own ops (SimplifiedLayerNormalization); loading the
    # graph in onnxruntime during validation is the real check.


def copy_side_files(src: Path, dst: Path, ckpt: Checkpoint) -> str:
    """Copy tokenizer and configs; write the chat template as its own file. Returns its file name."""
    for name in COPIED:
        origin = src / name if (src / name).is_file() else ckpt.path / name
        if name == "tokenizer.json" and origin.is_file():
            compact_json(origin, dst / name)
        elif origin.is_file():
            shutil.copy2(origin, dst / name)
    template = _chat_template(src) or _chat_template(ckpt.path)
    if template is None:
        raise RuntimeError(f"{ckpt.path} has no chat template (tokenizer_config.json or chat_template.jinja)")
    (dst / "chat_template.jinja").write_text(template, encoding="utf-8")
    return "chat_template.jinja"


def compact_json(src: Path, dst: Path) -> None:
    """The same JSON without indentation: tokenizers saves tokenizer.json pretty-printed, each merge pair
    on four lines (262 KB -> 106 KB for a 4,096-token vocabulary); the parsed content is identical."""
    data = json.loads(src.read_text(encoding="utf-8"))
    dst.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(t, str):
            return t
    return None


def write_genai_config(src: Path, dst: Path, session_options: dict[str, Any]) -> dict[str, Any]:
    """genai_config.json with the profile's session options; threads are left to the runtime."""
    cfg = json.loads((src / "genai_config.json").read_text())
    decoder = cfg["model"]["decoder"]
    opts = {k: v for k, v in session_options.items() if k not in ("intra_op_num_threads",)}
    decoder.setdefault("session_options", {}).update(opts)
    decoder["filename"] = MODEL_FILE
    (dst / "genai_config.json").write_text(json.dumps(cfg, indent=4))
    return cfg


def special_tokens(folder: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    names = {"endoftext": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>",
             "think_start": "<think>", "think_end": "</think>", "tool_call": "<tool_call>"}
    return {k: tid for k, t in names.items() if (tid := tok.token_to_id(t)) is not None}


def tool_call_format(template: str) -> str:
    """How the chat template teaches tool calls: "xml" where it shows the <function=...> body (Qwen3-Coder,
    Qwen3.5), else "json" (the Hermes body of Qwen2.5 / Qwen3)."""
    return "xml" if "<function=" in template else "json"


def common_runtime(ckpt: Checkpoint, profile: TargetProfile, template: str, specials: dict[str, int]) -> dict[str, Any]:
    """The runtime fields every backend shares: provider, tokenizer and chat settings, session settings,
    the checkpoint's pad token and recommended sampling."""
    thinking = ckpt.family in ("qwen3", "qwen3_5") and "think_start" in specials
    gen = generation_settings_of(ckpt, thinking)
    return dict(
        backend=profile.backend,
        execution_provider=profile.execution_provider,
        tokenizer="tokenizer.json",
        chat_template=template,
        tool_call_format=tool_call_format(template),
        family=ckpt.family,
        thinking=thinking,
        special_tokens=specials,
        session_options={k: v for k, v in profile.session_options.items() if k != "intra_op_num_threads"},
        threads=profile.session_options.get("intra_op_num_threads", "auto"),
        pad_token_id=gen.pad_token_id,
        sampling=gen.sampling,
        sampling_non_thinking=gen.sampling_non_thinking,
    )


def run_steps(art: Path, runtime: RuntimeSpec, profile: TargetProfile, say) -> dict[str, Any]:
    """The profile's package steps, in order, on the artifact folder; their records by name."""
    from edgeqwen.compiler.package_steps import get_step

    steps = {}
    for name in profile.package_steps:
        steps[name] = get_step(name)(art, runtime)
        say(f"    {name}: {step_summary(steps[name])}")
    return steps


def step_summary(record: dict[str, Any]) -> str:
    """One readable progress line for a pass's or package step's record (no dict reprs)."""
    if "summary" in record:
        return record["summary"]
    parts = []
    for k, v in record.items():
        if isinstance(v, dict):
            parts.append(f"{k.replace('_', ' ')}: " + (", ".join(f"{a} -> {b}" for a, b in v.items()) or "none"))
        elif isinstance(v, float):
            parts.append(f"{k.replace('_', ' ')} {v:.3g}")
        elif not isinstance(v, list):
            parts.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(parts) or "no change"
