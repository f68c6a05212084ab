"""Readable one-screen views of a manifest (``edgeqwen inspect`` and the build summary). Stdlib only."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def artifact_bytes(manifest: dict[str, Any]) -> int:
    return sum(f["bytes"] for f in manifest["files"].values())


def quantization_lines(q: dict[str, Any]) -> list[str]:
    lines = []
    for w in q.get("weight_ops", []):
        acc = f", accuracy_level {w['accuracy_level']}" if w["op"] == "MatMulNBits" else ""
        zp = ", asymmetric" if w.get("zero_points") else ", symmetric"
        lines.append(f"  {w['count']:4d} x {w['op']}: {w['bits']}-bit, block {w['block_size']}{acc}{zp}")
    if q.get("float_weight_matmuls"):
        lines.append(f"  {q['float_weight_matmuls']:4d} x MatMul with float weights")
    emb = q.get("embedding", {})
    if emb.get("op"):
        shared = "shared with lm_head (stored once)" if emb.get("shared_with_lm_head") else "own weights"
        bits = f" {emb['bits']}-bit" if emb.get("bits") else ""
        lines.append(f"  embedding: {emb['op']}{bits}, {shared}")
    if q.get("lm_head_last_position_only"):
        lines.append("  lm_head: last position only (prompt positions skip it)")
    ex = q.get("export")
    if ex:
        lines.append(f"  written by the {ex['exporter']} exporter in {ex.get('seconds', '?')}s: "
                     + "; ".join(f"{s['profile_pass']} by {s['done_by']}" for s in ex.get("steps", [])))
    for role, g in q.get("graphs", {}).items():  # static-shape builds: one line per graph
        shapes = ", ".join(f"{k} {v}" for k, v in g.get("inputs", {}).items())
        weights = ", ".join(f"{human_bytes(b)} {t}" for t, b in g.get("initializer_bytes", {}).items())
        lines.append(f"  {role}: {q.get('precision', '?')}, {g['nodes']} nodes, weights {weights}; {shapes}")
    return lines


def usability_lines(steps: dict[str, Any]) -> list[str]:
    """The NNAPI verdict of onnxruntime's mobile usability checker, when the profile ran it."""
    lines = []
    for role, r in steps.get("mobile_usability", {}).items():
        if isinstance(r, dict) and "nnapi" in r:
            n = r["nnapi"]
            lines.append(f"  {role}: NNAPI takes {n['nodes_supported']}/{n['nodes_total']} nodes "
                         f"({n['coverage']:.1%}) in {n['partitions']} partition(s); report {r['report']}")
    return lines


def validation_lines(v: dict[str, Any]) -> list[str]:
    if v.get("skipped"):
        return ["  not run (--no-validate)"]
    if v.get("pending"):
        return ["  pending"]
    s = v["summary"]
    parity = [f for f in v["failures"] if f not in v.get("quantization_loss", {}).get("failures", [])]
    verdict = "PASS" if not parity else "FAIL: " + "; ".join(parity)
    return [
        f"  verdict: {verdict}" + (" (parity: the compiler, against transformers computing with the artifact's own "
                                   "weights)" if v.get("quantization_loss") else ""),
        *([f"  reference: {v['reference']} on {v.get('execution_provider', '?')}"] if v.get("reference") else []),
        f"  {s['positions']} teacher-forced positions: max |dlogit| {s['max_abs_logit_diff']:.3g}, "
        f"KL mean {s['kl_mean']:.3g} / p99 {s['kl_p99']:.3g} nats, top-1 agreement {s['top1_agreement']:.1%}",
        f"  greedy decoding: identical to transformers for the first {s['greedy_match_min']}"
        f"/{v.get('bounds', {}).get('greedy_tokens', '?')} tokens on every prompt"
        + ("" if v.get("bounds", {}).get("min_greedy_match") is not None else " (not bounded in this profile)"),
        *([f"  int8 activations in MatMulNBits (the shipped kernel vs its fp32-compute twin): KL mean "
           f"{i['kl_mean']:.3g} / p99 {i['kl_p99']:.3g} nats, top-1 {i['top1_agreement']:.1%}"]
          if (i := v.get("int8_activations")) else []),
        *(weight_lines(w) if (w := v.get("weights")) else []),
        *loss_lines(v.get("quantization_loss"), v.get("weights", {}).get("worst_tensors", [])),
    ]


def weight_lines(w: dict[str, Any]) -> list[str]:
    """The byte half of the parity gate: RTN weights against the checkpoint, GPTQ ones against the values
    the GPTQ step chose (exact)."""
    pre = w.get("prequantized", 0)
    if not pre:
        return [f"  weights: all {w['tensors']} quantised tensors within {w['max_error_steps']:.3g} quantisation steps "
                f"of the checkpoint's"]
    checked = pre - len(w.get("unchecked", []))
    line = (f"  weights: {pre} of {w['tensors']} quantised tensors are the values the GPTQ step chose"
            + (f" ({checked} checked, largest difference {w.get('prequantized_max_steps', 0):.2g} steps)" if checked else
               " (not checked: its quantised checkpoint was a build intermediate)"))
    return [line] + ([f"    the other {w['tensors'] - pre} within one quantisation step of the checkpoint's"]
                     if w["tensors"] > pre else [])


def loss_lines(loss: dict[str, Any] | None, worst: list[dict[str, Any]]) -> list[str]:
    """The second verdict of a quantised build: what quantisation cost against the fp32 checkpoint."""
    if not loss:
        return []
    if loss.get("skipped"):
        return [f"quantisation loss (against the fp32 checkpoint): {loss.get('reason', 'skipped')}"]
    s, b = loss["summary"], loss.get("bounds", {})
    bound = ", ".join(f"{k} <= {v}" for k, v in b.items() if k.startswith("max_"))
    verdict = ("FAIL: " + "; ".join(loss["failures"])) if loss["failures"] else \
        (f"within {bound}" if bound else "reported (no bound set: --max-kl or the profile's [quality])")
    lines = [f"quantisation loss (against the fp32 checkpoint): {verdict}",
             f"  KL mean {s['kl_mean']:.3g} / p90 {s['kl_p90']:.3g} / p99 {s['kl_p99']:.3g} nats, top-1 agreement "
             f"{s['top1_agreement']:.1%}, perplexity {s['reference_perplexity']:.3g} -> {s['perplexity']:.3g}"]
    if loss.get("texts"):  # manifests from before the built-in text scored the parity prompts instead
        lines.append(f"  on {s['tokens']:,} tokens of built-in text: KL mean " + ", ".join(
            f"{t['text']} {t['kl_mean']:.3g}" for t in loss["texts"]))
    if loss.get("warn"):
        lines.append(f"  warning: above {b.get('warn_kl_mean')} nats; most changed: " + ", ".join(
            f"{t['tensor']} ({t['relative_error']:.1%})" for t in worst[:3]))
    return lines


def sampling_lines(rt: dict[str, Any]) -> list[str]:
    """The model's recorded decoding defaults (the runtime section's sampling tables)."""
    from edgeqwen.model.sampling import SamplingDefaults

    lines = []
    for key, label in (("sampling", "sampling defaults"), ("sampling_non_thinking", "sampling with thinking off")):
        if isinstance(rt.get(key), dict):
            d = SamplingDefaults.from_dict(rt[key])
            lines.append(f"  {label}: {d.describe()}" + (f" (from {d.source})" if d.source else ""))
    return lines


def state_lines(rt: dict[str, Any]) -> list[str]:
    """What each decoder layer carries between steps (the runtime contract's layer descriptors), runs of
    identical layers on one line: "layers 0-23: KV key/value [batch, 2, sequence, 64] float32"."""
    layers = rt.get("layers") or []

    def describe(layer: dict[str, Any]) -> str:
        shapes = sorted({"[" + ", ".join(str(d) for d in t["shape"]) + "] " + t["dtype"] for t in layer["tensors"]})
        what = ("KV cache", "rewinds by truncation") if layer["kind"] == "kv" else \
            (f"{layer['kind']} state", "its size does not grow; not truncatable")
        n = len(layer["tensors"])
        return f"{what[0]}, {n} tensor{'s' if n > 1 else ''} {' / '.join(shapes)} ({what[1]})"

    runs: list[tuple[int, int, str]] = []
    for i, layer in enumerate(layers):
        d = describe(layer)
        if runs and runs[-1][2] == d and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i, d)
        else:
            runs.append((i, i, d))
    return [f"  state, layer{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}: {d}" for a, b, d in runs]


def format_manifest(m: dict[str, Any], folder: str = "") -> str:
    src, prof, rt = m.get("source", {}), m["profile"], m["runtime"]
    total = artifact_bytes(m)
    lines = [
        f"edgeqwen artifact {folder}".rstrip(),
        f"  format version {m['format_version']}, built {m.get('created', '?')}"
        + (f" in {m['build']['seconds']}s" if m.get("build", {}).get("seconds") else ""),
        f"  source: {src.get('model_id')} ({src.get('architecture')}, {src.get('parameters', 0) / 1e6:.1f}M params, "
        f"{src.get('dtype')}, config sha256 {str(src.get('config_sha256'))[:12]})",
        *([f"  adapter: LoRA r={ad.get('r')} alpha {ad.get('lora_alpha')}{' (rsLoRA)' if ad.get('use_rslora') else ''}"
           f", scale {ad.get('merged_scale'):g}, {ad.get('layers')} layers ({', '.join(ad.get('target_modules', []))}), "
           f"sha256 {str(ad.get('sha256'))[:12]}, merged before quantisation"] if (ad := m.get("adapter")) else []),
        f"  target: {prof['name']} - {prof['description']}",
        f"  runtime: backend {rt['backend']} on {rt['execution_provider']}, context {rt['context_length']}, "
        f"threads {rt.get('threads', 'auto')}, family {rt['family']}" + (", thinking" if rt.get("thinking") else ""),
        *sampling_lines(rt),
        *state_lines(rt),
        f"  size on disk: {human_bytes(total)} in {len(m['files'])} files",
        "quantisation (read back from the graph):",
        *quantization_lines(m.get("quantization", {})),
        *(["mobile usability (onnxruntime's checker):", *usability_lines(m.get("package_steps", {}))]
          if usability_lines(m.get("package_steps", {})) else []),
        "validation:",
        *validation_lines(m.get("validation", {"skipped": True})),
    ]
    tools = m.get("tools", {})
    if tools:
        lines.append("tools: " + ", ".join(f"{k} {v}" for k, v in tools.items() if v != "not installed"))
    return "\n".join(lines)


def reference_mismatch(built_from: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Why a reference checkpoint is not the one the artifact was built from (empty when it is)."""
    lines = []
    for key, what in (("config_sha256", "config.json"), ("weights_sha256", "weights")):
        a, b = built_from.get(key), reference.get(key)
        if a and b and a != b:
            lines.append(f"the reference's {what} sha256 ({b[:12]}) differs from the manifest's ({a[:12]}, "
                         f"built from {built_from.get('model_id')}): this is not the checkpoint the artifact was "
                         "built from, so validation compares different models")
    return lines
