"""Which prompt tokens a corruption may touch: the user's content, never the chat template.

The prompt is rendered with the tokenizer's chat template, each user message is located in the
rendered text, and a token is masked when its character span overlaps one.
"""

from __future__ import annotations

import torch


def token_mask(tokenizer, text: str, spans: list[tuple[int, int]]
               ) -> tuple[list[int], torch.Tensor]:
    """(token ids of text, (T,) bool mask of the tokens overlapping spans)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    mask = [tid not in special and any(a < e and s < b for s, e in spans)
            for tid, (a, b) in zip(encoded.input_ids, encoded.offset_mapping)]
    return encoded.input_ids, torch.tensor(mask, dtype=torch.bool)


def chat_prompt(tokenizer, messages: list[dict]) -> tuple[list[int], torch.Tensor]:
    """Token ids of the chat prompt (with the assistant header) and the mask of the messages'
    content, every role (a client writes them all); the template's own tokens are never masked."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    spans, cursor = [], 0
    for message in messages:
        start = text.find(message["content"], cursor)
        if start < 0:  # a template that rewrites content: nothing of it can be located safely
            continue
        cursor = start + len(message["content"])
        spans.append((start, cursor))
    return token_mask(tokenizer, text, spans)
