"""The locally built fixture checkpoints are real enough for parity tests to mean something."""

import pytest


def test_tokenizer_has_qwen_ids(checkpoints):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoints("tiny-qwen3") / "tokenizer.json"))
    assert tok.encode("Hello world!").ids == [9707, 1879, 0]
    assert tok.token_to_id("<|endoftext|>") == 151643
    assert tok.token_to_id("<|im_start|>") == 151644 and tok.token_to_id("<|im_end|>") == 151645
    assert tok.token_to_id("<think>") == 151667 and tok.token_to_id("</think>") == 151668
    assert tok.decode(tok.encode("你好，世界 🌍").ids) == "你好，世界 🌍"


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-qwen2.5", "tiny-qwen3", "tiny-qwen3-tied"])
def test_greedy_continuations_are_not_one_repeated_token(checkpoints, name):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoints(name)))
    ids = torch.tensor([[785, 3974, 13876, 38835]])
    out = model.generate(ids, max_new_tokens=40, do_sample=False, repetition_penalty=1.0,
                         attention_mask=torch.ones_like(ids))[0, 4:].tolist()
    assert len(set(out)) >= 20, out  # measured: 37-40 distinct tokens


def test_chat_templates(checkpoints):
    from transformers import AutoTokenizer

    msgs = [{"role": "user", "content": "hi"}]
    q25 = AutoTokenizer.from_pretrained(str(checkpoints("tiny-qwen2.5")))
    assert q25.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    q3 = AutoTokenizer.from_pretrained(str(checkpoints("tiny-qwen3")))
    on = q3.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    off = q3.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    history = msgs + [{"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
                      {"role": "user", "content": "again"}]
    # reasoning of earlier turns is dropped from the history, as Qwen3's template does
    assert "hmm" not in q3.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
