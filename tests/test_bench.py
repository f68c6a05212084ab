"""edgeqwen bench and edgeqwen report compare on tiny artifacts (small matrices: this checks the
reports, not the speed)."""

import json
import subprocess
import sys

import pytest

from edgeqwen.bench.report import SCHEMA, load_report, validate_report

FAST = ["--reps", "2", "--prompt-lengths", "32,64,4096", "--depths", "0,32", "--decode-tokens", "8"]


def bench(folder, out, *extra):
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", str(folder), "-o", str(out), *FAST, *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def reports(artifacts, checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out = {}
    for target in ("cpu-fp32", "cpu-int4"):
        folder = artifacts("tiny-qwen3", target).folder
        r = bench(folder, root / target, "--quality", "--reference", str(checkpoints("tiny-qwen3")),
                  "--quality-tokens", "300", "--label", target)
        out[target] = (root / target, r)
    return out


@pytest.mark.slow
def test_report_files_and_schema(reports):
    folder, run = reports["cpu-int4"]
    report = load_report(folder / "report.json")
    assert report["schema"] == SCHEMA
    sp = report["speed"]
    assert set(sp["prefill_tokens_per_s"]) == {"32", "64"} and sp["skipped_beyond_context"] == [4096]
    assert set(sp["decode_tokens_per_s"]) == {"0", "32"}
    for s in list(sp["prefill_tokens_per_s"].values()) + list(sp["decode_tokens_per_s"].values()):
        assert len(s["runs"]) == 2 and s["mean"] > 0 and s["min"] <= s["mean"] <= s["max"]
    assert report["size_bytes"] > 0 and report["peak_rss_mb"] > 0 and report["load_s"]["mean"] > 0
    assert report["device"]["usable_cores"] >= 1 and report["threads"] == report["device"]["usable_cores"]
    assert (folder / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "report.md").read_text()
    assert "| prompt tokens | prefill tok/s" in md and "KL mean" in md
    assert "[" in run.stderr and "prefill" in run.stderr  # progress lines
    # the text sample is what a user gets: the model's own sampling (Qwen3 thinking: 0.6 / 0.95 / 20), seeded
    sample = report["sample"]
    assert {k: sample["sampling"][k] for k in ("temperature", "top_p", "top_k", "seed")} == \
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "seed": 0}
    assert sample["tokens"] > 0 and "temperature 0.6, top_p 0.95, top_k 20" in md and sample["prompt"] in md


@pytest.mark.slow
def test_quality_of_fp32_is_the_reference_and_int4_is_not(reports):
    fp32 = load_report(reports["cpu-fp32"][0] / "report.json")["quality"]
    int4 = load_report(reports["cpu-int4"][0] / "report.json")["quality"]
    assert fp32["tokens"] == int4["tokens"] == 300  # --quality-tokens 300: 301 ids, 300 predictions
    assert fp32["kl_max"] < 1e-8 and fp32["top1_agreement"] == 1.0
    assert fp32["perplexity"] == pytest.approx(fp32["reference_perplexity"], rel=1e-5)
    assert int4["kl_mean"] > 1e-3 and int4["reference_perplexity"] == pytest.approx(fp32["reference_perplexity"])


@pytest.mark.slow
def test_compare(reports, tmp_path):
    paths = [str(reports[t][0] / "report.json") for t in ("cpu-fp32", "cpu-int4")]
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "report", "compare", *paths, "-o", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "compare.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| cpu-fp32") and table[3].startswith("| cpu-int4")
    assert "prefill@32" in table[0] and "decode@32" in table[0]
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_schema_is_checked(tmp_path):
    with pytest.raises(ValueError, match="schema"):
        validate_report({"schema": "other/9"})
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"schema": SCHEMA, "artifact": {}}))
    with pytest.raises(ValueError, match="missing device"):
        load_report(bad)


@pytest.mark.slow
def test_points_beyond_the_context_are_reported_as_skipped(reports):
    folder, run = reports["cpu-int4"]
    why = "skipped prefill at 4096 tokens: needs 4098 positions, the artifact's context length is 2048"
    assert why in run.stderr
    md = (folder / "report.md").read_text()
    assert "Not measured:" in md and why in md
    assert json.loads((folder / "report.json").read_text())["speed"]["skipped"] == [why]


@pytest.mark.slow
def test_compare_takes_report_folders_and_refuses_other_folders(reports, tmp_path):
    folders = [str(reports[t][0]) for t in ("cpu-fp32", "cpu-int4")]
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "report", "compare", *folders, "-o", str(tmp_path / "c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "cpu-fp32" in r.stdout and (tmp_path / "c" / "compare.md").is_file()
    r = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "report", "compare", str(tmp_path), "-o",
                        str(tmp_path / "d")], capture_output=True, text=True)
    assert r.returncode == 2 and "folder without a report.json" in r.stderr and "Traceback" not in r.stderr
