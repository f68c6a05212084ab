"""`edgeqwen plan`: the catalogue's shapes against transformers, the size rule against real builds of every
genai profile, the fit on hand-made data, the shipped calibration's own error table, and the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeqwen.model.published import published_config, published_models
from edgeqwen.model.spec import SpecError, parse_spec
from edgeqwen.plan.catalogue import CATALOGUE, HAND_SHAPES, Shape, find
from edgeqwen.plan.fit import leave_one_out, nonnegative_fit
from edgeqwen.plan.model import QUANTITIES, builtin_calibration, decode_features
from edgeqwen.plan.storage import storage, weight_bytes
from edgeqwen.targets import list_profiles, load_profile

GENAI = [p.name for p in list_profiles() if p.backend == "genai"]


def _config(shape: Shape, context: int) -> dict:
    cfg = {"model_type": shape.family, "hidden_size": shape.hidden, "num_hidden_layers": shape.layers,
           "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
           "intermediate_size": shape.intermediate, "vocab_size": shape.vocab, "tie_word_embeddings": shape.tied,
           "max_position_embeddings": context}
    if shape.head_dim:
        cfg["head_dim"] = shape.head_dim
    if shape.family == "qwen3_5":  # the text model's config: its linear-attention sizes and layer pattern
        kh, vh, kd, vd, kernel = shape.linear
        every = shape.layers // shape.attention_layers
        cfg.update(model_type="qwen3_5_text", linear_num_key_heads=kh, linear_num_value_heads=vh,
                   linear_key_head_dim=kd, linear_value_head_dim=vd, linear_conv_kernel_dim=kernel,
                   layer_types=["full_attention" if (i + 1) % every == 0 else "linear_attention"
                                for i in range(shape.layers)])
    return cfg


@pytest.mark.parametrize("model", [m for m in CATALOGUE if m.shape], ids=lambda m: m.name)
def test_catalogue_parameter_counts_are_transformers_own(model):
    """Each shape's parameter count equals transformers' model of that config (built on the meta device: no
    memory), so the sizes plan derives from it count the same tensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**_config(model.shape, model.context))
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    assert model.shape.parameters == sum(p.numel() for p in m.parameters())
    assert Shape.from_config(cfg.to_dict()) == model.shape


@pytest.mark.parametrize("name", published_models())
def test_catalogue_shapes_are_read_from_the_stored_published_configs(name):
    """Every stored published config is in the catalogue: one the parser builds gives its entry the shape, the
    context and the parameter count transformers gives that very file's text model; one the parser refuses
    makes its entry unbuildable, the reason in one line."""
    m, config = find(name), published_config(name)
    assert m.shape_from == f"{name}/config.json"
    try:
        spec = parse_spec(config)
    except SpecError as e:
        assert m.shape is None and m.why_not and "\n" not in str(e)
        return
    assert not spec.unbuilt_kinds()
    assert (m.shape, m.context) == (Shape.of(spec), spec.positions)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # the text model (Qwen3.5: its vision tower is not built)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    assert m.shape.parameters == sum(p.numel() for p in model.parameters())


def test_only_models_without_a_stored_config_have_hand_written_shapes():
    """A shape is written by hand only where no config was found (adding the file moves the entry onto it),
    and the same-shape entries name the stored config they share."""
    assert not set(HAND_SHAPES) & set(published_models())
    for m in CATALOGUE:
        if m.shape:
            own = m.shape_from == f"{m.name}/config.json"
            assert own or m.shape_from.endswith("(same shape)") or m.name in HAND_SHAPES, m.name
            assert own == (m.name in published_models()), m.name


def test_catalogue_sizes_match_the_published_model_names():
    """Published sizes (the number in the name) within 10 %: catches a wrong layer count or width."""
    for m in CATALOGUE:
        if m.shape and "Qwen2.5" in m.name:
            named = float(m.name.split("-")[-2].removesuffix("B"))
            assert abs(m.shape.parameters / 1e9 / named - 1) < 0.10, m.name
    assert find("Qwen2.5-7B-Instruct").shape.parameters == 7_615_616_512  # the 7B shape we build, counted there
    assert not find("Qwen3-30B-A3B").shape and "mixture of experts" in find("Qwen3-30B-A3B").why_not


def _weight_cases():
    """Quick tier: the one pair other quick tests build anyway; slow tier: every genai profile on one fixture, the
    fixtures (untied with q/k/v bias; tied with q/k norm; YaRN) taking turns (every pair passed before the suite's
    time budget cut them to one a profile)."""
    fixtures = ("tiny-qwen2", "tiny-qwen3-tied", "tiny-qwen2.5-yarn")
    yield pytest.param("cpu-int4-fast", "tiny-qwen2", id="cpu-int4-fast-tiny-qwen2")
    for i, target in enumerate(GENAI):
        fixture = fixtures[i % len(fixtures)]
        if (target, fixture) != ("cpu-int4-fast", "tiny-qwen2"):
            yield pytest.param(target, fixture, marks=pytest.mark.slow, id=f"{target}-{fixture}")


@pytest.mark.parametrize("target, fixture", list(_weight_cases()))
def test_weight_bytes_equal_what_the_build_writes(artifacts, checkpoints, fixture, target):
    """The size rule is exact (up to the graph's few int64 shape constants) for every genai profile:
    tied and untied, Qwen2 bias and Qwen3 norms, int4/int8 RTN, ModelBuilder int4, fp16, fp32."""
    if fixture != "tiny-qwen2" and target not in ("cpu-int4", "directml-int4", "cpu-fp32"):
        pytest.skip("one fixture covers the remaining profiles")
    built = artifacts(fixture, target)
    m = built.manifest
    config = json.loads((checkpoints(fixture) / "config.json").read_text())
    actual = sum(v for k, v in m["quantization"]["initializer_bytes"].items() if k != "int64")
    est = weight_bytes(Shape.from_config(config), storage(load_profile(target)), config["max_position_embeddings"])
    assert est == actual


def test_nonnegative_fit_recovers_known_costs_and_drops_a_negative_term():
    """Hand-made rows: time = 2 ms + bytes / 10 GB/s exactly; a feature whose best weight would be negative
    (here: rows marked 1 run 0.5 ms faster) is dropped, not allowed to make a cost negative."""
    exact = [(f"c{i}/a", {"per_token": 1.0, "bytes_int4": b}, 0.002 + b / 1e10)
             for i, b in enumerate([1e8, 3e8, 1e9, 4e9])]
    coef = nonnegative_fit(exact)
    assert coef["per_token"] == pytest.approx(0.002, rel=1e-6)
    assert coef["bytes_int4"] == pytest.approx(1e-10, rel=1e-6)
    assert max(abs(e) for e in leave_one_out(exact)) < 1e-6  # exact data: every left-out point predicted exactly
    marked = [(a, {**f, "marked": float(i % 2)}, y - 0.0005 * (i % 2)) for i, (a, f, y) in enumerate(exact)]
    coef = nonnegative_fit(marked)
    assert "marked" not in coef and all(v >= 0 for v in coef.values())
    off = exact[:-1] + [(exact[-1][0], exact[-1][1], exact[-1][2] * 1.5)]  # one point off by 50 %
    assert max(abs(e) for e in leave_one_out(off)) > 0.2  # and the left-out error shows it


def test_shipped_calibration_covers_real_sizes_and_reports_its_own_errors():
    """The calibration in the wheel was measured on the 0.5B..7B shapes, every kernel family cpu profiles use,
    and its stated errors are the largest of its own left-out errors (not a rounder number)."""
    cal = builtin_calibration()
    names = {p["artifact"] for p in cal.points}
    for shape in ("q05", "q15", "q3b", "q7b"):
        assert any(n.startswith(shape + "-") for n in names), shape
    assert {"int4", "int8", "fp32"} <= cal.kinds("decode")
    for q in QUANTITIES:
        errs = [abs(p["left_out_error"]) for p in cal.points if p["quantity"] == q and p["left_out_error"] is not None]
        assert errs and max(errs) == pytest.approx(cal.errors[q]), q
    assert cal.errors["size"] < 0.01  # sizes are exact but for the tokenizer's bytes


def test_decode_is_memory_bound_in_the_fit():
    """Physical sense of the fitted model: a bigger model or a wider format never decodes faster."""
    cal = builtin_calibration()
    s4, s8 = storage(load_profile("cpu-int4")), storage(load_profile("cpu-int8"))
    t = lambda m, s: cal.predict("decode", decode_features(find(m).shape, s, 0))
    assert t("Qwen2.5-0.5B-Instruct", s4) < t("Qwen2.5-3B-Instruct", s4) < t("Qwen2.5-7B-Instruct", s4)
    assert t("Qwen2.5-3B-Instruct", s4) < t("Qwen2.5-3B-Instruct", s8)


def _plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeqwen.cli", "plan", *args], capture_output=True, text=True)


def test_plan_command_json_fits_budget_best_first():
    r = _plan("--ram", "6G", "--context", "4096", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    err = out["errors"]["memory"]
    assert out["fits"], "something fits in 6 GiB"
    for row in out["fits"]:
        assert row["memory_bytes"] * (1 + err) <= 6 * 2**30
        assert row["decode_tokens_per_s"] is None or row["decode_tokens_per_s"] >= 5
        assert row["profile"].startswith("cpu-")  # this device: cpu profiles only
    params = [row["parameters"] for row in out["fits"]]
    assert params == sorted(params, reverse=True)
    big = [r for r in out["rejected"] if r["model"] == "Qwen2.5-72B-Instruct"]
    assert big and all("GiB >" in r["why_not"] for r in big)
    assert any(m["model"] == "Qwen3-30B-A3B" for m in out["not_buildable"])


def test_plan_task_filter_and_readable_table_with_explain():
    r = _plan("--ram", "8G", "--task", "code", "--explain")
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("Do not fit")[0]
    assert "Coder" in table and "Qwen3-" not in table and "Math" not in table
    assert "leave one checkpoint out" in r.stdout and "q7b-cpu-int4" in r.stdout
    r = _plan("--ram", "8G", "--task", "math", "--context", "8192", "--json")
    rejected = json.loads(r.stdout)["rejected"]
    assert any("context 4,096 < 8,192" in x["why_not"] for x in rejected)  # the Math models hold 4K


@pytest.mark.parametrize("args,needle", [(["--ram", "lots"], "is not a size like 8G"),
                                         (["--device", "/nonexistent.json"], "not an `edgeqwen bench` report"),
                                         (["--target", "no-such-profile"], "no-such-profile")])
def test_plan_bad_input_is_one_line(args, needle):
    r = _plan(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_plan_from_a_bench_report_of_another_device(artifacts, tmp_path):
    """A bench report measured on the device sets the speed scale: the plan for that report's own artifact
    shape predicts the report's own decode speed back."""
    from edgeqwen.bench.run import bench
    from edgeqwen.bench.speed import SpeedPlan

    folder = artifacts("tiny-qwen2.5", "cpu-int4").folder
    bench(folder, tmp_path / "rep", SpeedPlan(prompt_lengths=(16,), depths=(0,), decode_tokens=8, reps=1))
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["artifact"]["config"]["hidden_size"] == 64  # the shape travels in the report
    r = _plan("--device", str(tmp_path / "rep" / "report.json"), "--ram", "4G", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "report:" in out["speed_scales"]
    assert all(row["profile"] == "cpu-int4" or row["profile"].startswith("cpu-") for row in out["fits"])


def test_plan_runs_without_the_compiler_packages():
    """Planning happens before anything is built: the base install (runtime, bench) is enough."""
    from test_runtime_import import BLOCKED, SCRIPT

    # the build stack; the runtime, bench (device facts) and the server's argument registration stay importable
    blocked = [b for b in BLOCKED if b not in ("edgeqwen.bench", "edgeqwen.server")]
    head = SCRIPT.format(blocked=blocked, folder="unused").split("import edgeqwen")[0]
    body = "from edgeqwen.cli import main\nraise SystemExit(main(['plan', '--ram', '4G', '--json']))\n"
    r = subprocess.run([sys.executable, "-c", head + body], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fits"]


def test_plan_shows_the_builds_memory_from_the_compilers_own_model():
    """The build column is the figure the compiler refuses on (edgeqwen.build_memory, one model): GPTQ one
    layer at a time for cpu-int4 (Qwen3-8B: a few GiB, not the ~66 GiB of Olive's whole-model pass), the
    streaming export for RTN profiles, whatever the size."""
    from edgeqwen.build_memory import EXPORT_BYTES
    from edgeqwen.compiler.torch_quant import leading_torch_passes, memory_needed
    from edgeqwen.model.published import published_generation_config

    r = _plan("--ram", "64G", "--context", "4096", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(x["model"], x["profile"]): x for x in json.loads(r.stdout)["fits"] + json.loads(r.stdout)["rejected"]}
    spec = parse_spec(published_config("Qwen3-8B"), published_generation_config("Qwen3-8B"))
    steps = leading_torch_passes(list(load_profile("cpu-int4").olive_passes))
    gptq = rows[("Qwen3-8B", "cpu-int4")]
    assert gptq["build_bytes"] == memory_needed(0, steps, spec) and "layer by layer" in gptq["build_step"]
    assert 2 * 2**30 < gptq["build_bytes"] < 8 * 2**30  # 3.39 GiB measured on 2 layers (build_memory.py)
    fast = rows[("Qwen2.5-72B-Instruct", "cpu-int4-fast")]
    assert fast["build_bytes"] == EXPORT_BYTES and fast["build_step"] == "export"


def test_a_hybrid_models_state_counts_kv_for_attention_layers_only():
    """Qwen3.5-0.8B: 6 of its 24 layers keep a KV cache [2 kv heads x 256]; the 18 Gated DeltaNet layers a
    fixed state each (conv window 3 x 6,144 and recurrent state 16 x 128 x 128), whatever the context; the
    planner's memory and decode terms read both, and rejects the profiles that cannot build it (DirectML), not
    the GPTQ one (layer by layer, its Gated DeltaNet layers calibrated too)."""
    m = find("Qwen3.5-0.8B")
    assert m.shape.attention_layers == 6 and m.shape.linear_layers == 18
    assert m.shape.kv_bytes_per_token(4) == 2 * 6 * 2 * 256 * 4
    assert m.shape.fixed_state_bytes(4) == 18 * (3 * 6144 + 16 * 128 * 128) * 4
    from edgeqwen.plan.model import memory_features

    s = storage(load_profile("cpu-int4-fast"))
    grown = memory_features(m.shape, s, 8192, 0)["kv"] - memory_features(m.shape, s, 4096, 0)["kv"]
    assert grown == 4096 * m.shape.kv_bytes_per_token(4)
    assert memory_features(m.shape, s, 0, 0)["kv"] == m.shape.fixed_state_bytes(4)
    from edgeqwen.plan.recommend import Device, plan

    rows = plan(builtin_calibration(), Device("d", "cpu", 64 * 2**30, 1.0, 1.0, ""), 4096, None, 0.0,
                ["cpu-int4", "cpu-int4-fast", "directml-int4"])
    mine = {r["profile"]: r for r in rows["fits"] + rows["rejected"] if r["model"] == "Qwen3.5-0.8B"}
    assert mine["cpu-int4-fast"]["fits"] and mine["cpu-int4"]["fits"] and not mine["directml-int4"]["fits"]
    assert "cannot build Gated DeltaNet layers" in mine["directml-int4"]["why_not"]
    # GPTQ layer by layer: the larger of its two layer kinds (gated attention's q_proj is 2 x 2,048 rows)
    assert mine["cpu-int4"]["build_step"] == "Gptq (layer by layer)"


def test_the_catalogues_layer_sizes_are_the_tensor_maps():
    """The planner's build-memory terms (Shape.layer_dims, from the catalogue's own fields) and the
    compiler's (build_memory.layer_dims, from the tensor map's input groups and the checkpoint layout) are
    the same layer kinds for every stored config: Qwen2 / Qwen3's one kind, Qwen3.5's two."""
    from edgeqwen.build_memory import layer_dims
    from edgeqwen.model.published import published_config, published_generation_config, published_models
    from edgeqwen.model.spec import parse_spec
    from edgeqwen.plan.catalogue import Shape

    kinds = {}
    for name in published_models():
        spec = parse_spec(published_config(name), published_generation_config(name))
        kinds[name] = set(layer_dims(spec))
        assert set(Shape.of(spec).layer_dims()) == kinds[name], name
    assert len(kinds["Qwen3.5-0.8B"]) == 2 and len(kinds["Qwen3-8B"]) == 1
