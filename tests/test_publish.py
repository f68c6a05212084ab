"""Publishing is exclusive: two builds into one output folder never both report success."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from edgeqwen.artifact import load_verified, lock_path, publish_lock, read_manifest


def _build(ckpt, target, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", "build", str(ckpt), "-t", target, "-o", str(out),
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # two builds in subprocesses (~10 s); the quick tier keeps the held lock's refusal and --wait
def test_two_builds_racing_into_one_folder(checkpoints, tmp_path):
    """A CI matrix writing two profiles to one place: exactly one build publishes, the other exits non-zero
    with one line saying why, and what is published is whole and is the winner's."""
    ckpt, out = checkpoints("tiny-qwen2.5"), tmp_path / "out"
    procs = {t: _build(ckpt, t, out, "--no-validate") for t in ("cpu-fp32", "cpu-int8")}
    done = {t: (p.wait(timeout=600), *p.communicate()) for t, p in procs.items()}
    winners = [t for t, (rc, _, _) in done.items() if rc == 0]
    assert len(winners) == 1, {t: (rc, err[-500:]) for t, (rc, _, err) in done.items()}
    (loser,) = set(done) - set(winners)
    rc, _, err = done[loser]
    lines = [ln for ln in err.splitlines() if ln.startswith("edgeqwen: error:")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    # whichever of the two ways it lost: still building (the lock) or already published
    assert "another edgeqwen build" in lines[0] or "already exists" in lines[0], lines[0]
    manifest = load_verified(out)  # every file present and matching its sha256
    assert manifest["profile"]["name"] == winners[0]
    assert not lock_path(out.resolve()).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial or lock file left beside it


def test_a_held_lock_refuses_at_once_and_wait_starts_after_it(checkpoints, tmp_path):
    ckpt, out = checkpoints("tiny-qwen2.5"), tmp_path / "out"
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        with publish_lock(out.resolve()):
            held.set()
            release.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        t0 = time.monotonic()
        refused = _build(ckpt, "cpu-fp32", out, "--no-validate")
        rc, err = refused.wait(timeout=300), refused.communicate()[1]
        assert rc == 2 and "Traceback" not in err, err
        import os
        assert f"another edgeqwen build (pid {os.getpid()}) is writing {out.resolve()}" in err
        assert "--wait" in err and time.monotonic() - t0 < 120
        assert not out.exists()

        waiting = _build(ckpt, "cpu-fp32", out, "--no-validate", "--wait")
        time.sleep(3)
        assert waiting.poll() is None  # queued behind the lock, not failed, not done
    finally:
        release.set()
        holder.join()
    rc, _, err = waiting.wait(timeout=600), *waiting.communicate()
    assert rc == 0, err
    assert read_manifest(out)["profile"]["name"] == "cpu-fp32"
    # a second build that waits behind the first finds the folder published: refused unless --force
    again = _build(ckpt, "cpu-fp32", out, "--no-validate", "--wait")
    rc, err = again.wait(timeout=600), again.communicate()[1]
    assert rc == 2 and "already exists" in err and "--force" in err
