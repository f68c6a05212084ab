"""The wheel as a user installs it (not editable), in fresh virtual environments: the runtime alone,
with the [serve] extra, and with the [build] extra. Slow: each venv installs its dependencies (from pip's cache when warm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def run(*cmd, env=None, check=True, timeout=1200) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the tracked files, as a fresh clone has them (no build/ or egg-info of ours).
    src = tmp_path_factory.mktemp("src")
    files = run("git", "-C", REPO, "ls-files", "-co", "--exclude-standard").stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src)
    (whl,) = out.glob("edgeqwen-*.whl")
    return whl


def fresh_venv(root: Path, requirement: str) -> tuple[Path, dict]:
    venv.EnvBuilder(with_pip=True).create(root)
    py = root / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", requirement)
    # Nothing of the repository on the path: the installed wheel is all there is.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEQWEN_TARGETS", "VIRTUAL_ENV")}
    env["PATH"] = f"{root / 'bin'}:{env['PATH']}"
    return root / "bin", env


def test_runtime_only_install_runs_an_artifact(wheel, artifacts, tmp_path):
    bin_, env = fresh_venv(tmp_path / "venv", str(wheel))
    py = bin_ / "python"
    missing = run(py, "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'olive', 'onnx', "
                  "'matplotlib') if u.find_spec(m)])", env=env).stdout.strip()
    assert missing == "[]", f"the runtime install pulled in compiler packages: {missing}"
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    r = run(bin_ / "edgeqwen", "run", folder, "Hello", "--max-new-tokens", "4", "--temperature", "0", "--json", env=env)
    assert json.loads(r.stdout)["metrics"]["generated_tokens"] == 4
    r = run(bin_ / "edgeqwen", "targets", env=env)
    assert "cpu-int4" in r.stdout and "(default)" in r.stdout

    # commands of extras that are not installed: one line naming the extra, no traceback
    for cmd, extra in ((["build", "some-checkpoint"], "build"), (["validate", str(folder), "--reference", "x"], "build"),
                       (["demo"], "build"), (["serve", str(folder)], "serve")):
        r = run(bin_ / "edgeqwen", *cmd, env=env, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"[{extra}] extra" in r.stderr and f"pip install 'edgeqwen[{extra}]'" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # bench without matplotlib still writes its JSON and Markdown, and says how to get the plot
    out = tmp_path / "bench"
    r = run(bin_ / "edgeqwen", "bench", folder, "-o", out, "--prompt-lengths", "16", "--depths", "0",
            "--decode-tokens", "4", "--reps", "1", env=env)
    assert (out / "report.json").is_file() and (out / "report.md").is_file() and not (out / "speed.png").exists()
    assert "pip install 'edgeqwen[bench]'" in r.stderr and "Traceback" not in r.stderr


def test_build_extra_install_lists_targets_and_builds(wheel, checkpoints, tmp_path):
    bin_, env = fresh_venv(tmp_path / "venv", f"{wheel}[build]")
    r = run(bin_ / "edgeqwen", "targets", "-v", env=env)
    assert "cpu-int4" in r.stdout and "edgeqwen/profiles" in r.stdout  # the copy inside the wheel
    out = tmp_path / "art"
    r = run(bin_ / "edgeqwen", "build", checkpoints("tiny-qwen3"), "-t", "cpu-fp32", "-o", out, "-q", env=env)
    assert "verdict: PASS" in r.stdout
    r = run(bin_ / "edgeqwen", "run", out, "Hello", "--max-new-tokens", "3", "--temperature", "0", "--json", env=env)
    assert json.loads(r.stdout)["metrics"]["generated_tokens"] == 3


def test_serve_extra_serves_without_the_compiler(wheel, artifacts, tmp_path):
    bin_, env = fresh_venv(tmp_path / "venv", f"{wheel}[serve]")
    present = run(bin_ / "python", "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', "
                  "'olive', 'onnx') if u.find_spec(m)])", env=env).stdout.strip()
    assert present == "[]", f"the serve install pulled in compiler packages: {present}"
    sys.path.insert(0, str(REPO / "tests"))
    from serving import free_port

    port = free_port()
    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    proc = subprocess.Popen([str(bin_ / "edgeqwen"), "serve", str(folder), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time
        import urllib.request

        body = json.dumps({"model": folder.name, "messages": [{"role": "user", "content": "Hi"}],
                           "max_tokens": 3}).encode()
        reply: dict = {"usage": {}}
        for _ in range(150):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    reply = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        assert reply["usage"].get("completion_tokens") == 3, "no answer within 30 s"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
