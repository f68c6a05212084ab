#!/usr/bin/env python3
"""Build Qwen fixture checkpoints locally (no Hub): real Qwen vocabulary and chat templates, random weights.

    python tools/make_tiny_qwen.py --list
    python tools/make_tiny_qwen.py tiny-qwen3 -o /tmp/tiny-qwen3
    python tools/make_tiny_qwen.py qwen2.5-0.5b-shape -o /tmp/q05 --dtype bfloat16
    python tools/make_tiny_qwen.py qwen2.5-7b-shape -o /tmp/q7b --dtype bfloat16   # 15 GB, written shard by shard
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from edgeqwen.testmodels.fixtures import FIXTURES, make_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", choices=sorted(FIXTURES))
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--list", action="store_true", help="list the fixtures")
    args = p.parse_args()
    if args.list or not args.name:
        for name, s in FIXTURES.items():
            hd = s.head_dim or s.hidden // s.heads
            print(f"{name:20s} {s.family}  hidden {s.hidden}, {s.layers} layers, {s.heads}/{s.kv_heads} heads, "
                  f"head_dim {hd}, ffn {s.intermediate}, vocab {s.vocab_size}, published {s.published}, {'tied' if s.tied else 'untied'}"
                  + (", streamed (bfloat16 only)" if s.streamed else ""))
        return 0
    out = args.output or Path(args.name)
    spec = FIXTURES[args.name]
    if spec.streamed and args.dtype != "bfloat16":
        p.error(f"{args.name} is written shard by shard in bfloat16 only: add --dtype bfloat16")
    make_checkpoint(args.name, out, dtype=args.dtype, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
