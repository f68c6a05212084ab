import subprocess
import sys
from pathlib import Path

import pytest

from edgeqwen.errors import ProfileError
from edgeqwen.targets import default_profile_name, list_profiles, load_profile, load_profile_file

GOOD = """
name = "{name}"
description = "test profile"
device = "cpu"
execution_provider = "cpu"
precision = "int4"
backend = "genai"
graph_passes = ["restore_io_names"]

[[olive_passes]]
type = "ModelBuilder"
precision = "fp32"

[validation]
max_kl_mean = 0.1
"""


def write(tmp_path: Path, text: str, name: str = "p") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.format(name=name))
    return path


def test_shipped_profiles_load_and_one_is_default():
    names = {p.name for p in list_profiles()}
    assert {"cpu-int4", "cpu-int8", "cpu-fp32", "android-cpu-int4"} <= names
    assert default_profile_name() == "cpu-int4"


def test_good_profile_round_trips(tmp_path):
    p = load_profile_file(write(tmp_path, GOOD))
    assert p.olive_passes[0].type == "ModelBuilder"
    assert p.olive_passes[0].options == {"precision": "fp32"}
    assert p.validation.max_kl_mean == 0.1
    assert p.to_dict()["olive_passes"] == [{"type": "ModelBuilder", "precision": "fp32"}]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: 'threads = 4\n' + t, "unknown key(s) threads"),
        (lambda t: t.replace('precision = "int4"', 'precision = "int3"'), "precision 'int3'"),
        (lambda t: t.replace("max_kl_mean", "max_kl_mea"), "unknown validation key(s) max_kl_mea"),
        (lambda t: t.replace('execution_provider = "cpu"', 'execution_provider = "tpu"'), "execution_provider 'tpu'"),
        (lambda t: t.replace("max_kl_mean = 0.1", 'max_kl_mean = "low"'), "validation.max_kl_mean must be a number"),
        (lambda t: t.replace('description = "test profile"\n', ""), "missing key(s) description"),
        (lambda t: t.replace("[[olive_passes]]", "[olive_pass]"), "unknown key(s) olive_pass"),
        (lambda t: t + "\n[[[broken", "not valid TOML"),
    ],
)
def test_malformed_profiles_are_rejected(tmp_path, edit, message):
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(ProfileError) as e:
        load_profile_file(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('backend = "genai"', 'backend = "tflite"'), "backend 'tflite'"),
        (lambda t: t.replace('["restore_io_names"]', '["no_such_pass"]'), "unknown graph pass(es) no_such_pass"),
        (lambda t: 'package_steps = ["tflite"]\n' + t, "unknown package step(s) tflite"),
    ],
)
def test_names_the_compiler_does_not_know_are_rejected(tmp_path, edit, message):
    """Registered names are the compiler's to check: profile parsing imports no compiler code."""
    from edgeqwen.compiler.pipeline import check_profile

    path = write(tmp_path, edit(GOOD))
    with pytest.raises(ProfileError) as e:
        check_profile(load_profile_file(path))
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_profile_parsing_imports_no_compiler_code():
    code = ("import sys; from edgeqwen.targets import list_profiles; list_profiles(); "
            "print(sorted(m for m in sys.modules if m.startswith(('edgeqwen.compiler', 'onnx', 'olive', 'torch'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_name_must_match_file(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text(GOOD.format(name="p"))
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile_file(path)


def test_unknown_target_lists_available():
    with pytest.raises(ProfileError) as e:
        load_profile("cpu-int3")
    assert "unknown target 'cpu-int3'" in str(e.value)
    assert "cpu-int4" in str(e.value) and "cpu-fp32" in str(e.value)


def test_adding_a_target_is_adding_a_file(tmp_path, monkeypatch):
    write(tmp_path, GOOD, name="my-board")
    monkeypatch.setenv("EDGEQWEN_TARGETS", str(tmp_path))
    assert load_profile("my-board").name == "my-board"
