#!/usr/bin/env python3
"""Where an artifact's quantisation loss comes from: KL against the fp32 model on the held-out text, with all of
the artifact's quantised weights in the model, then one group at a time (the output matrix / tied table, and
each kind of layer's linear layers by the input they read).

    python benchmarks/kl_by_tensor_group.py CHECKPOINT ARTIFACT [--tokens 1022]

transformers computes with the artifact's dequantised weights (read back from the graph, as the parity gate
reads them), in fp32: what the weights cost, without the int8 activations of accuracy_level 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOW = 512


def main() -> int:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeqwen.corpus import held_out_text
    from edgeqwen.quality.graph_weights import ArtifactWeights
    from edgeqwen.quality.metrics import per_token, summarize
    from edgeqwen.quality.reference import checkpoint_tensor_map

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("artifact", type=Path)
    p.add_argument("--tokens", type=int, default=1022)
    args = p.parse_args()
    names = checkpoint_tensor_map(args.checkpoint)
    weights = ArtifactWeights(args.artifact, json.loads((args.artifact / "edgeqwen.json").read_text()), names)
    text, _ = held_out_text()
    ids = AutoTokenizer.from_pretrained(str(args.checkpoint))(text, add_special_tokens=False).input_ids[:args.tokens + 1]
    windows = [(a, min(a + WINDOW, len(ids))) for a in range(0, len(ids) - 1, WINDOW - 1)]
    model = AutoModelForCausalLM.from_pretrained(str(args.checkpoint), dtype=torch.float32).eval()
    original = {n: t.detach().clone() for n, t in model.named_parameters()}

    def logits() -> list[np.ndarray]:
        with torch.no_grad():
            return [model(torch.tensor([ids[a:b]])).logits[0].numpy() for a, b in windows]

    reference = logits()

    def kl(group: list[str]) -> float:
        with torch.no_grad():
            for n, t in model.named_parameters():
                t.copy_(original[n])
            for w in group:
                t = model.get_parameter("lm_head.weight" if w == names.lm_head else names.parameter(w))
                t.copy_(torch.from_numpy(np.asarray(weights.rows(w), dtype=np.float32)).reshape(t.shape))
        parts = [per_token(r[:-1], q[:-1], np.asarray(ids[a + 1:b])) for r, q, (a, b) in zip(reference, logits(), windows)]
        return summarize(parts)["kl_mean"]

    groups: dict[str, list[str]] = {"all quantised weights": [n for n in weights.where if n != names.embed]}
    if names.lm_head in weights.where:
        groups["output matrix / tied table"] = [names.lm_head]
    for t in names.layers:
        for g in t.input_groups():
            key = f"{t.mixer} layers: " + " + ".join(n.split(".")[-2] for n in g)
            groups.setdefault(key, []).extend(g)
    print(f"KL mean against fp32 on {len(ids) - 1} held-out tokens, {args.artifact.name}:")
    for key, group in groups.items():
        print(f"  {key:60s} {kl(group):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
