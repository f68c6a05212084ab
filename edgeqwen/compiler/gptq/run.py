"""Sequential GPTQ, one decoder layer in memory at a time, with Olive's Gptq semantics.

Olive's run_layerwise_quantization (update_before_process=False), per decoder layer:
  1. every calibration window through the float layer, hooks accumulating each linear layer's Hessian:
     all seven from this one pass (the MLP's inputs are collected before attention is quantised);
  2. GPTQ on each linear layer; its weight becomes the fake-quantised one;
  3. every window through the now fake-quantised layer: its outputs are the next layer's inputs.
Here the same three steps run on a layer built alone from the checkpoint instead of one inside the
loaded model; the windows are the embedding rows of the calibration tokens, read from the table. Steps 1
and 3 are most of an 8B layer's time (two passes of 6.3 TFLOP and 6.5 TFLOP of Hessian products for 32 x 512
tokens): the fast arithmetic runs their linear layers in bf16 where the CPU has it, multiplies only the
Hessians' upper blocks, and factors each input's Hessian once for the layers sharing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edgeqwen import allocator
from edgeqwen.compiler.gptq.hessian import Enough, Groups, Hessian, LayerHessians
from edgeqwen.compiler.gptq.layer import LayerCall, build_layer, layer_call, layer_tensor_names
from edgeqwen.compiler.gptq.options import GptqOptions, ModuleFormat, module_formats, quantization_config
from edgeqwen.compiler.gptq.own_solve import InverseFactor, NotPositiveDefinite, act_order, inverse_factor, solve
from edgeqwen.compiler.gptq.precision import linears_in, matmul_dtype
from edgeqwen.compiler.gptq.solve import PackedLinear, pack, quantize_linear
from edgeqwen.compiler.gptq.writer import ROWS_PER_COPY, ShardedCheckpoint, ShardTensor, copied, from_torch
from edgeqwen.compiler.olive_import import load_olive
from edgeqwen.errors import QuantisationFailed
from edgeqwen.model.generation import read_json
from edgeqwen.model.spec import read_spec
from edgeqwen.model.tensors import TensorMap, tensor_map
from edgeqwen.safetensors_io import CheckpointTensors


@dataclass
class LayerTimes:
    """Seconds of each part of one layer (the progress line; where big models spend their time)."""

    load: float = 0.0
    calibrate: float = 0.0  # the float pass with the Hessian hooks
    solve: float = 0.0
    forward: float = 0.0  # the fake-quantised pass giving the next layer's inputs
    write: float = 0.0
    damping: dict[str, float] = field(default_factory=dict)  # input group -> damping, where raised above the profile's

    @property
    def total(self) -> float:
        return self.load + self.calibrate + self.solve + self.forward + self.write


@dataclass
class Clock:
    """Progress for ``say``: layer i of n, elapsed, an estimate of what is left from the mean layer."""

    layers: int
    say: Callable[[str], None]
    t0: float = field(default_factory=time.perf_counter)

    def report(self, i: int, t: LayerTimes) -> None:
        elapsed = time.perf_counter() - self.t0
        left = elapsed / (i + 1) * (self.layers - i - 1)
        self.say(f"    GPTQ layer {i + 1}/{self.layers}: {t.total:.1f} s (calibration {t.calibrate:.1f}, solve "
                 f"{t.solve:.1f}, forward {t.forward:.1f}), {elapsed:.0f} s elapsed, ~{left:.0f} s left")
        for group, damp in t.damping.items():
            self.say(f"    GPTQ layer {i + 1}: {group}'s Hessian was not positive definite at the profile's damping; "
                     f"solved damped by {damp:.0%} of its mean diagonal")


def weight_files(folder: Path) -> list[str]:
    """The checkpoint's safetensors files: those its index names, else every one in the folder."""
    index = read_json(folder / "model.safetensors.index.json")
    if index:
        return sorted(set(index["weight_map"].values()))
    return sorted(p.name for p in folder.glob("*.safetensors"))


@torch.no_grad()
def embed(src: CheckpointTensors, names: TensorMap, rows: list[list[int]]) -> list[torch.Tensor]:
    """Each window's input to layer 0, [1, T, H] fp32: the embedding rows of its tokens, the table read
    ROWS_PER_COPY rows at a time (a 151936 x 4096 table is never whole in memory)."""
    ids = torch.tensor(rows)  # [S, T]
    vocab, hidden = src.shape(names.embed)
    out = torch.empty(*ids.shape, hidden)
    for r0 in range(0, vocab, ROWS_PER_COPY):
        r1 = min(vocab, r0 + ROWS_PER_COPY)
        hit = (ids >= r0) & (ids < r1)
        if hit.any():
            out[hit] = torch.from_numpy(src.rows(names.embed, r0, r1))[ids[hit] - r0]
    return [out[s:s + 1].clone() for s in range(len(rows))]  # one allocation per window, as Olive's


def module_groups(names: TensorMap, i: int) -> Groups:
    """Layer ``i``'s linear layers grouped by input, as module paths inside the layer (the order Olive
    solves them in for Qwen2 / Qwen3: layer.modules() order)."""
    return tuple(tuple(names.inner_path(i, n).removesuffix(".weight") for n in g) for g in names.layers[i].input_groups())


def module_name(names: TensorMap, i: int, inner: str) -> str:
    """The checkpoint's module path of ``inner`` (a path inside layer ``i``): its packed tensors' prefix."""
    return f"{names.layer_prefix}{i}.{inner}"


def olive_name(names: TensorMap, i: int, inner: str) -> str:
    """The module path Olive gives ``inner`` in its overrides and quantization_config: the transformers
    model's (Qwen3.5's model.language_model. prefix is model. there)."""
    return names.parameter(module_name(names, i, inner) + ".weight").removesuffix(".weight")


@torch.no_grad()
def run_windows(layer: torch.nn.Module, states: list[torch.Tensor], call: LayerCall, mixer: str, keep: bool) -> None:
    """Every window through ``layer`` (batch 1, as Olive's calibration batches); ``keep``: replace each
    window's states by the layer's output, in place (one set of states alive)."""
    kwargs = call.arguments(mixer)
    for s, hs in enumerate(states):
        try:
            out = layer(hs, **kwargs)
        except Enough:  # the calibration pass: every Hessian has this window's input
            if keep:  # a pass whose outputs are needed must not have the Hessian hooks on
                raise
            continue
        if keep:
            states[s] = out[0] if isinstance(out, tuple) else out


def solve_layer(layer: torch.nn.Module, hessians: LayerHessians, formats: dict[str, ModuleFormat],
                names: TensorMap, i: int, options: GptqOptions, damping: dict[str, float]) -> dict[str, PackedLinear]:
    """GPTQ on each linear layer of ``layer`` (module path inside the layer -> its packed result); a group
    whose damping had to be raised is added to ``damping``. A Hessian that cannot be solved ends the build
    with one line naming the layer, the modules and what to change."""
    packed: dict[str, PackedLinear] = {}
    for g in hessians.groups:
        for kind in g:
            if not bool(torch.isfinite(layer.get_submodule(kind).weight).all()):
                raise QuantisationFailed(f"{module_name(names, i, kind)}.weight has NaN or infinite values: the "
                                         "checkpoint is damaged; convert or download it again")
        where = module_name(names, i, "/".join(g))
        try:
            if options.arithmetic != "olive":
                packed.update(solve_group(layer, g, hessians.take_group(g),
                                          {k: formats[olive_name(names, i, k)] for k in g}, options, damping))
            else:
                for kind in g:
                    packed[kind] = quantize_linear(layer.get_submodule(kind), hessians.take(kind),
                                                   formats[olive_name(names, i, kind)], options.damp_percent,
                                                   options.desc_act)
        except NotPositiveDefinite as e:
            raise QuantisationFailed(f"GPTQ: the Hessian of {where}'s input: {e}; check the checkpoint's weights "
                                     "(this input's activations are degenerate)") from None
        except torch.linalg.LinAlgError:
            raise QuantisationFailed(f"GPTQ: the Hessian of {where}'s input is not positive definite at damp_percent "
                                     f"{options.damp_percent} (Olive's solver); raise damp_percent in the target's Gptq "
                                     "step, or drop arithmetic = \"olive\" (the fast arithmetic raises the damping "
                                     "itself)") from None
    return packed


def solve_group(layer: torch.nn.Module, group: tuple[str, ...], hessian: Hessian, formats: dict[str, ModuleFormat],
                options: GptqOptions, damping: dict[str, float]) -> dict[str, PackedLinear]:
    """The fast solve of the linear layers sharing ``hessian`` (consumed): one inverse factor for all of them
    (one per act-order setting, should their formats differ in it), each weight replaced by its fake-quantised
    one and packed. A damping raised above the profile's is recorded in ``damping`` under the group's name."""
    orders = {kind: act_order(formats[kind], options.desc_act) for kind in group}
    distinct = sorted(set(orders.values()))
    h = hessian.take()  # [K, K]
    factors: dict[bool, InverseFactor] = {}
    for o in distinct:  # each setting factors the Hessian once; all but the last a copy (it is consumed)
        factors[o] = inverse_factor(h if o == distinct[-1] else h.clone(), options.damp_percent, o)
    del h  # freed before the solves, which read only the factors (Qwen3-8B's down_proj: 0.6 GB)
    raised = max(f.damp for f in factors.values())
    if raised != options.damp_percent:
        damping["/".join(group)] = raised
    return {kind: pack(layer.get_submodule(kind), *solve(layer.get_submodule(kind).weight, factors[orders[kind]],
                                                         formats[kind], options.clip_search), formats[kind])
            for kind in group}


def layer_shard(src: CheckpointTensors, names: TensorMap, i: int, packed: dict[str, PackedLinear]) -> list[ShardTensor]:
    """Layer ``i``'s tensors: the packed linear layers, and the float ones (norms, biases) as stored."""
    quantised = {module_name(names, i, kind) + ".weight" for kind in packed}
    out = [copied(src, n) for n in layer_tensor_names(names, i) if n not in quantised]
    for kind, p in packed.items():
        out += [from_torch(n, t) for n, t in p.tensors(module_name(names, i, kind)).items()]
    return sorted(out, key=lambda t: t.name)


def _stopwatch() -> Callable[[], float]:
    """A function giving the seconds since its previous call (or since it was made)."""
    last = [time.perf_counter()]

    def tick() -> float:
        now = time.perf_counter()
        dt, last[0] = now - last[0], now
        return dt

    return tick


def check_source(folder: Path, src: CheckpointTensors, names: TensorMap) -> None:
    from edgeqwen.errors import CheckpointError

    missing = [n for n in names.names() if n not in src]
    if missing:
        raise CheckpointError(f"{folder}: tensor {missing[0]} is missing (is it an already quantised checkpoint? "
                              f"GPTQ quantises float weights)")


def quantize(checkpoint: Path, out: Path, options: GptqOptions, rows: list[list[int]],
             say: Callable[[str], None] = lambda s: None) -> Path:
    """GPTQ every decoder linear layer of ``checkpoint`` on the calibration windows ``rows`` (token ids, all
    the same length), layer by layer; the quantised checkpoint is written to ``out``, which is returned."""
    load_olive()  # before the first solve imports its quantiser: see olive_import
    with CheckpointTensors(checkpoint, weight_files(checkpoint)) as src:
        spec = read_spec(checkpoint, set(src.where))
        names = tensor_map(spec, set(src.where))
        groups = [tuple(olive_name(names, i, m) for m in g) for i in range(spec.layers) for g in module_groups(names, i)]
        formats = module_formats(options, groups)
        check_source(checkpoint, src, names)
        call = layer_call(checkpoint, spec, len(rows[0]))
        sink = ShardedCheckpoint(out, spec.layers + 2)
        states = embed(src, names, rows)
        sink.add([copied(src, names.embed)])
        clock = Clock(spec.layers, say)
        for i in range(spec.layers):
            last = i == spec.layers - 1  # its outputs feed nothing: the head is not quantised here
            clock.report(i, quantize_layer(src, names, i, call, states, formats, options, sink, not last))
            allocator.release()
        head = [names.final_norm] + ([] if spec.tied else [names.lm_head])
        sink.add([copied(src, n) for n in head])
    config: dict[str, Any] = {**spec.config, "quantization_config": quantization_config(options, formats)}
    return sink.finish(checkpoint, config)


def quantize_layer(src: CheckpointTensors, names: TensorMap, i: int, call: LayerCall, states: list[torch.Tensor],
                   formats: dict[str, ModuleFormat], options: GptqOptions, sink: ShardedCheckpoint,
                   feed_next: bool = True) -> LayerTimes:
    """Olive's three steps on decoder layer ``i``; ``states`` become its outputs (step 3 skipped when
    ``feed_next`` is false: the last layer's outputs would only be thrown away)."""
    t, tick = LayerTimes(), _stopwatch()
    layer = build_layer(call, src, names, i)
    mixer = names.layers[i].mixer
    t.load = tick()
    dtype = matmul_dtype() if options.arithmetic == "fast" else torch.float32
    hessians = LayerHessians(module_groups(names, i), symmetric=options.arithmetic != "olive")
    hessians.attach(layer)
    with linears_in(layer, dtype):
        run_windows(layer, states, call, mixer, keep=False)
    hessians.detach()
    t.calibrate = tick()
    packed = solve_layer(layer, hessians, formats, names, i, options, t.damping)
    t.solve = tick()
    if feed_next:
        with linears_in(layer, dtype):
            run_windows(layer, states, call, mixer, keep=True)
    t.forward = tick()
    sink.add(layer_shard(src, names, i, packed))
    t.write = tick()
    return t
