"""One description of the model: only the modules listed here read config.json's model keys or spell
checkpoint tensor names; every other module reads edgeqwen.model's spec and tensor map. A new module that
picks keys out of a config dict, or writes "model.layers.{i}.self_attn.q_proj.weight" itself, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edgeqwen"

# config.json keys that describe the model (what the spec parses); a module naming one reads a config
CONFIG_KEYS = re.compile(r"^(config\.json|num_hidden_layers|num_attention_heads|num_key_value_heads|hidden_size|"
                         r"intermediate_size|tie_word_embeddings|rope_theta|rope_scaling|rope_parameters|"
                         r"rms_norm_eps|max_position_embeddings|attention_bias|use_sliding_window)$")
# pieces of checkpoint tensor names (what the tensor map spells)
TENSOR_NAMES = re.compile(r"self_attn\.|embed_tokens\.weight|lm_head\.weight|mlp\.(gate|up|down)_proj|"
                          r"(input|post_attention)_layernorm\.weight|model\.norm\.weight|[qk]_norm\.weight")

ALLOWED_CONFIG = {
    "model/spec.py": "the one parser of config.json",
    "model/generation.py": "the one reader of generation token ids and sampling",
    "model/published.py": "finds the stored published config.json files (their keys are the spec's to read)",
    "compiler/checkpoint.py": "opens config.json (bytes for its hash) and hands it to the parser",
    "compiler/package.py": "copies config.json into the artifact (the bench report ships it; not read)",
    "compiler/export/genai_config.py": "writes genai_config.json, whose keys share these names (values from the spec)",
    "compiler/flows/genai.py": "reads the graph's own genai_config.json (Olive's builder writes it on that path)",
    "bench/run.py": "ships the artifact's config.json in the report; plan parses it through the spec",
    "summary.py": "names config.json in a line of the build summary",
    "compiler/passes/rope_caches.py": "asks transformers' own config object for its normalised rope table",
    "compiler/torch_quant.py": "reads Olive's quantization_config from the quantised copy's config.json",
    "compiler/gptq/writer.py": "writes the quantised checkpoint's config.json (the spec's config plus quantization_config)",
    "testmodels/fixtures.py": "makes fixture configs from the published ones (a maker, not a reader)",
    "testmodels/trained.py": "makes the trained small model's config (a maker)",
}
ALLOWED_TENSORS = {
    "model/tensors.py": "the one tensor map",
    "model/spec.py": "the tied rule: a checkpoint without lm_head.weight can only be tied",
}


def _literals(path: Path) -> list[str]:
    """Every string constant of a module except docstrings (f-string pieces included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def _modules() -> dict[str, list[str]]:
    return {p.relative_to(PACKAGE).as_posix(): _literals(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("pattern, allowed, what", [
    (CONFIG_KEYS, ALLOWED_CONFIG, "reads config.json's model keys"),
    (TENSOR_NAMES, ALLOWED_TENSORS, "spells checkpoint tensor names"),
])
def test_only_the_listed_modules_read_the_config_or_name_tensors(pattern, allowed, what):
    readers = {m for m, lits in _modules().items() if any(pattern.search(s) for s in lits)}
    extra = sorted(readers - set(allowed))
    assert not extra, f"{extra} {what}: read edgeqwen.model's spec / tensor map instead, or list it here with a reason"
    stale = sorted(set(allowed) - readers)
    assert not stale, f"{stale} no longer {what}: take them off the list"


def test_the_map_names_every_tensor_a_fixture_checkpoint_holds(checkpoints):
    """The tensor map and the checkpoint agree exactly: nothing missing, nothing the map does not know."""
    from safetensors import safe_open

    from edgeqwen.model.spec import read_spec
    from edgeqwen.model.tensors import tensor_map

    for name in ("tiny-qwen2", "tiny-qwen2.5", "tiny-qwen3", "tiny-qwen3-tied"):
        folder = checkpoints(name)
        held: set[str] = set()
        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), "np") as st:
                held |= set(st.keys())
        names = tensor_map(read_spec(folder, held))
        assert set(names.names()) == held, name
        for n in names.names():
            assert names.checkpoint_name(names.parameter(n)) == n


def test_unknown_architectures_and_silent_fallbacks_are_refused():
    from edgeqwen.model.spec import SpecError, parse_spec

    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}
    with pytest.raises(SpecError, match="Qwen3MoeForCausalLM is not supported; edgeqwen builds Qwen2ForCausalLM"):
        parse_spec({**base, "architectures": ["Qwen3MoeForCausalLM"]})
    with pytest.raises(SpecError, match="names no architecture"):
        parse_spec({**base, "model_type": "llama"})  # once read as Qwen2 by the planner
    with pytest.raises(SpecError, match="sliding-window attention"):
        parse_spec({**base, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True})
    # the features each architecture decides, one way for every reader
    q2 = parse_spec({**base, "architectures": ["Qwen2ForCausalLM"]})
    q3 = parse_spec({**base, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32})
    assert (q2.qkv_bias, q2.qk_norm, q2.head_dim, q2.tied) == (True, False, 16, False)
    assert (q3.qkv_bias, q3.qk_norm, q3.head_dim) == (False, True, 32)
    assert parse_spec({**base, "model_type": "qwen3"}).architecture == "Qwen3ForCausalLM"  # as transformers' Auto classes
    # a checkpoint without an output matrix can only be tied, whatever its config says
    assert parse_spec({**base, "architectures": ["Qwen2ForCausalLM"]}, tensor_names={"model.embed_tokens.weight"}).tied
