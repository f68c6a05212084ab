"""A small LoRA adapter trained locally with peft (no Hub): the input of `edgeqwen build --adapter`
in tests and in the README's fine-tune example."""

from __future__ import annotations

from pathlib import Path

from edgeqwen.corpus import held_out_text

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def train_lora(base: Path, out: Path, steps: int = 30, r: int = 4, alpha: float = 8.0, rslora: bool = False,
               targets: tuple[str, ...] = ALL_LINEAR, lr: float = 5e-3, seed: int = 0) -> Path:
    """Fine-tune a LoRA adapter on a few windows of local text; save it as peft does
    (adapter_config.json + adapter_model.safetensors)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none",
                        use_rslora=rslora, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    text, _ = held_out_text()
    ids = torch.tensor(tok(text[:20000])["input_ids"][: 8 * 64]).reshape(8, 64)  # 8 windows of 64 tokens
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        batch = ids[step % 4 * 2: step % 4 * 2 + 2]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.save_pretrained(str(out))
    return out


def random_lora(base: Path, out: Path, r: int = 8, alpha: float = 16.0,
                targets: tuple[str, ...] = ALL_LINEAR, seed: int = 0) -> Path:
    """A LoRA adapter of the right shapes for ``base`` with random A and B, written without loading the
    model: for checkpoints too large to fine-tune here (memory of the merge on real sizes)."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for shard in sorted(base.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                module = name.rsplit(".", 1)[0]
                if name.endswith(".weight") and module.split(".")[-1] in targets:
                    n_out, n_in = f.get_slice(name).get_shape()
                    key = f"base_model.model.{module}"
                    tensors[f"{key}.lora_A.weight"] = torch.randn(r, n_in, generator=gen) / n_in ** 0.5
                    tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, r, generator=gen) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(targets), "bias": "none",
        "use_rslora": False, "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM"}, indent=2))
    return out
