"""Corruption masks cover the content tokens of every message, never the chat template's."""

from transformers import AutoTokenizer

from guard import chat_prompt, token_mask


def test_chat_mask_covers_exactly_the_content_of_every_role(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Where does Kalo Venmar live?"},
                {"role": "assistant", "content": "In Quillmoor."},
                {"role": "user", "content": "And his job?"}]
    ids, mask = chat_prompt(tokenizer, messages)

    assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
    masked = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "Be brief.Where does Kalo Venmar live?In Quillmoor.And his job?"


def test_special_tokens_inside_a_span_are_never_masked(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "<|im_start|>Where<|im_end|>"
    ids, mask = token_mask(tokenizer, text, [(0, len(text))])
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "Where"
