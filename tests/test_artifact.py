import json

import pytest

from edgeqwen.artifact import FORMAT_VERSION, MANIFEST_NAME, load_verified, read_manifest, staged_folder, write_manifest
from edgeqwen.errors import ArtifactError

MINIMAL = {"runtime": {"backend": "genai"}, "profile": {"name": "x"}}


def make(folder):
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph" * 100)
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return write_manifest(folder, dict(MINIMAL))


def test_manifest_lists_every_file_with_hash(tmp_path):
    m = make(tmp_path / "a")
    assert m["format_version"] == FORMAT_VERSION
    assert set(m["files"]) == {"model.onnx", "sub/tokenizer.json"}
    assert load_verified(tmp_path / "a")["files"]["model.onnx"]["bytes"] == 500


def test_one_changed_byte_is_refused_naming_the_file(tmp_path):
    make(tmp_path / "a")
    data = bytearray((tmp_path / "a" / "model.onnx").read_bytes())
    data[17] ^= 1
    (tmp_path / "a" / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx does not match its sha256"):
        load_verified(tmp_path / "a")


def test_truncated_and_missing_files_are_refused(tmp_path):
    make(tmp_path / "a")
    (tmp_path / "a" / "model.onnx").write_bytes(b"graph")
    with pytest.raises(ArtifactError, match="model.onnx has 5 bytes"):
        load_verified(tmp_path / "a", full=False)
    make(tmp_path / "b")
    (tmp_path / "b" / "sub" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="sub/tokenizer.json listed in the manifest is missing"):
        load_verified(tmp_path / "b", full=False)


def test_missing_corrupt_or_future_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_manifest(tmp_path / "nothing")
    (tmp_path / "a").mkdir()
    with pytest.raises(ArtifactError, match="edgeqwen.json is missing"):
        read_manifest(tmp_path / "a")
    (tmp_path / "a" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest is corrupt"):
        read_manifest(tmp_path / "a")
    (tmp_path / "a" / MANIFEST_NAME).write_text(json.dumps({**MINIMAL, "files": {}, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        read_manifest(tmp_path / "a")


def test_staged_folder_publishes_only_on_success(tmp_path):
    final = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with staged_folder(final) as stage:
            (stage / "half.onnx").write_text("x")
            raise RuntimeError("crash")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_folder(final) as stage:
        (stage / "whole").write_text("ok")
    assert (final / "whole").read_text() == "ok"


def test_existing_output_needs_force_and_is_replaced_whole(tmp_path):
    final = tmp_path / "art"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(ArtifactError, match="already exists"):
        with staged_folder(final):
            pass
    assert (final / "old").exists()
    with staged_folder(final, force=True) as stage:
        (stage / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def _kv_layers(n: int = 2) -> list[dict]:
    shape = ["batch", 2, "sequence", 64]
    return [{"kind": "kv", "tensors": [{"input": f"past_key_values.{i}.{k}", "output": f"present.{i}.{k}",
                                        "shape": shape, "dtype": "float32"} for k in ("key", "value")]}
            for i in range(n)]


RUNTIME = {"version": 3, "backend": "genai", "execution_provider": "cpu", "tokenizer": "tokenizer.json",
           "chat_template": "chat_template.jinja", "family": "qwen3", "thinking": True,
           "special_tokens": {"im_end": 151645}, "context_length": 2048, "vocab_size": 151936,
           "eos_token_ids": [151645, 151643], "pad_token_id": 151643, "logits": "last_position",
           "model_file": "model.onnx", "genai_config": "genai_config.json", "layers": _kv_layers()}


def test_runtime_contract_round_trips():
    """A contract 3 section (before positions and visual_input) reads as this contract with their defaults."""
    from edgeqwen.artifact import RUNTIME_CONTRACT_VERSION, RuntimeSpec

    spec = RuntimeSpec.from_dict(dict(RUNTIME))
    assert spec.version == RUNTIME_CONTRACT_VERSION == 4 and spec.positions == "mask" and spec.visual_input is None
    assert spec.context_length == 2048 and spec.static is None and spec.threads == "auto"
    assert RuntimeSpec.from_dict(spec.to_dict()) == spec
    static = {**RUNTIME, "backend": "static", "static": {
        "graphs": {"prefill": {"file": "prefill.ort", "chunk": 64, "nodes": 10}, "decode": {"file": "decode.ort", "chunk": 1}},
        "cache_length": 1024, "layers": 2, "kv_heads": 2, "head_dim": 32, "vocab_size": 151936, "mask_value": -1e4}}
    spec = RuntimeSpec.from_dict(static)
    assert spec.static.graphs["decode"].chunk == 1 and RuntimeSpec.from_dict(spec.to_dict()) == spec


def _optional_fields():
    """Every field of the runtime contract that has a default: (name, a non-default value to write)."""
    from dataclasses import MISSING, fields

    from edgeqwen.artifact import RuntimeSpec, SamplingDefaults, VisualInput

    values = {
        "pad_token_id": 151643,
        "sampling": SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.05,
                                     presence_penalty=1.5, source="generation_config.json"),
        "sampling_non_thinking": SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20, source="card"),
        "tool_call_format": "xml",
        "session_options": {"enable_mem_pattern": False},
        "threads": 2,
        "model_file": "model.ort",
        "genai_config": "genai_config.json",
        "model_format": "ort",
        "operator_config": "required_operators.config",
        "static": {"graphs": {"prefill": {"file": "prefill.ort", "chunk": 64, "nodes": 10},
                              "decode": {"file": "decode.ort", "chunk": 1, "nodes": 3}},
                   "cache_length": 1024, "layers": 2, "kv_heads": 2, "head_dim": 32, "vocab_size": 151936,
                   "mask_value": -1e4},
        "positions": "mrope",
        "visual_input": VisualInput("visual_embeds", 1024, "float32", (248056, 248057)),
    }
    optional = [f.name for f in fields(RuntimeSpec)
                if f.name != "version" and (f.default is not MISSING or f.default_factory is not MISSING)]
    assert sorted(optional) == sorted(values), "a new optional runtime field needs a round-trip case here"
    return list(values.items())


@pytest.mark.parametrize("name, value", _optional_fields(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("how", ["set", "absent", "null"])
def test_every_optional_runtime_field_round_trips(tmp_path, name, value, how):
    """Written by the compiler's path (to_dict -> the manifest file), read back by the runtime's (from_dict):
    equal, whether the field is set, absent (a published config without the key) or null (transformers 5)."""
    from dataclasses import asdict, is_dataclass

    from edgeqwen.artifact import RuntimeSpec, runtime_spec

    raw = {k: v for k, v in RUNTIME.items() if k != name}
    if how == "set":
        raw[name] = asdict(value) if is_dataclass(value) else value
    elif how == "null":
        raw[name] = None
    spec = RuntimeSpec.from_dict(json.loads(json.dumps(raw)))
    if how == "set":
        got = getattr(spec, name)
        assert (asdict(got) if is_dataclass(got) else got) == raw[name]
    else:  # the field's default: what an artifact without it means
        default = RuntimeSpec.__dataclass_fields__[name]
        assert getattr(spec, name) == (default.default_factory() if callable(default.default_factory) else default.default)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.bin").write_bytes(b"x")
    write_manifest(tmp_path / "a", {"runtime": spec.to_dict(), "profile": {}})
    back = runtime_spec(read_manifest(tmp_path / "a"))
    assert back == spec


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("version"), "contract version None, this edgeqwen reads 3 and 4"),
    (lambda r: r.update(version=1), "contract version 1"),
    (lambda r: r.update(version=2), "contract version 2"),
    (lambda r: r.update(version=5), "contract version 5"),
    (lambda r: r.update(positions="rows"), "positions 'rows'"),
    (lambda r: r.update(visual_input={"input": "visual_embeds", "hidden": 64}), "malformed visual_input table"),
    (lambda r: r.update(visual_input={"input": "v", "hidden": 64, "dtype": "int8", "placeholder_ids": [1]}),
     "malformed visual_input table"),
    (lambda r: r.pop("layers"), "lacks layers"),
    (lambda r: r.update(pad_token_id="0"), "pad_token_id must be int"),
    (lambda r: r.update(sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 2.5}), "malformed sampling table"),
    (lambda r: r.update(sampling={"temperature": -1.0}), "malformed sampling table"),
    (lambda r: r.update(sampling_non_thinking={"temp": 0.7}), "malformed sampling_non_thinking table"),
    (lambda r: r.pop("context_length"), "lacks context_length"),
    (lambda r: r.update(context_length="2048"), "context_length must be int"),
    (lambda r: r.update(logits="every"), "logits 'every'"),
    (lambda r: r.update(tool_call_format="yaml"), "tool_call_format 'yaml'"),
    (lambda r: r.update(kv_cache="int8"), "unknown field(s) kv_cache"),
    (lambda r: r.update(eos_token_ids=151645), "eos_token_ids that are not a list"),
    (lambda r: r.update(static={"graphs": {"prefill": {"file": "p.ort"}}}), "malformed static table"),
])
def test_runtime_contract_refuses_what_it_does_not_know(edit, message):
    from edgeqwen.artifact import RuntimeSpec

    raw = json.loads(json.dumps(RUNTIME))
    edit(raw)
    with pytest.raises(ArtifactError, match="runtime section") as e:
        RuntimeSpec.from_dict(raw, "artifact x")
    assert message in str(e.value) and str(e.value).startswith("artifact x:")
