#!/usr/bin/env python3
"""Fine-tune a small LoRA adapter with peft on local text (no Hub), as a user's fine-tune would leave it:
adapter_config.json + adapter_model.safetensors, ready for `edgeqwen build BASE --adapter OUT`.

    python tools/make_lora_adapter.py /tmp/base -o /tmp/my-lora [--steps 30] [--r 8 --alpha 16] [--rslora]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeqwen.testmodels.lora import ALL_LINEAR, train_lora  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="local Qwen checkpoint folder")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--targets", default=",".join(ALL_LINEAR), help="comma-separated linear layers")
    args = p.parse_args()
    out = train_lora(args.base, args.output, steps=args.steps, r=args.r, alpha=args.alpha, rslora=args.rslora,
                     targets=tuple(args.targets.split(",")))
    print(f"adapter written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
