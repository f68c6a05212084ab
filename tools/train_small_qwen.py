#!/usr/bin/env python3
"""Train the small Qwen3 (or Qwen3.5) model whose perplexity and KL mean something (offline, fixed seeds).

    python tools/train_small_qwen.py -o edgeqwen/testmodels/data/small-qwen3 [--steps 1000]
    python tools/train_small_qwen.py --architecture qwen3_5 -o edgeqwen/testmodels/data/small-qwen3.5

Corpus: the CPython standard library's top-level modules of the running Python (the last 5 % of the
files, by name, are the held-out evaluation text, written to eval.txt). See edgeqwen/testmodels/trained.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from edgeqwen.testmodels.trained import TrainSpec, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--steps", type=int, default=TrainSpec.steps)
    p.add_argument("--seed", type=int, default=TrainSpec.seed)
    p.add_argument("--architecture", choices=["qwen3", "qwen3_5"], default=TrainSpec.architecture,
                   help="qwen3_5: Qwen3.5's hybrid text model (3 of 4 layers Gated DeltaNet)")
    args = p.parse_args()
    spec = dataclasses.replace(TrainSpec(), steps=args.steps, seed=args.seed, architecture=args.architecture)
    info = train(args.output, spec,
                 log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
