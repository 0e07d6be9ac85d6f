"""A transformers model as a metric's subject (guard/metrics.py, `Subject`): per-token
log-probabilities of answers, teacher-forced, and greedy answers, batched with left padding and
one adapter per row; prompts corrupted as the server corrupts flagged ones."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .corrupt import Corruption, request_seed
from .mask import chat_prompt

# How a forward runs row j through adapter labels[j]: a context for the forward (or forwards, a
# decode) that yields its extra keyword arguments. peft's is below; serving's hf engine has its
# own (engines.MultiLoRA: a stacked adapter with per-row scales).
AdapterRows = Callable[[list], AbstractContextManager[dict[str, Any]]]
ANSWER_TOKENS = 48  # greedy answers' length: TOFU's answers are one or two sentences


@dataclass(frozen=True)
class ModelSubject:
    """A transformers model that reads every question as the server reads a flagged one:
    its user tokens corrupted by `corruption` (None: as written), the noise seeded by the text."""

    model: object
    tokenizer: object
    corruption: Corruption | None = None
    max_tokens: int = ANSWER_TOKENS

    def _prompt(self, question: str) -> torch.Tensor:
        ids, mask = chat_prompt(self.tokenizer, [{"role": "user", "content": question}])
        with torch.inference_mode():
            embed = self.model.get_input_embeddings()
            embeds = embed(torch.tensor(ids, device=embed.weight.device))  # (T, D)
            if self.corruption is not None:
                embeds = self.corruption(embeds, mask, request_seed(question))
        return embeds

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        questions, answers, where = by_question(pairs)
        scored = token_logprobs(self.model, [self._prompt(q) for q in questions],
                                [[answer_ids(self.tokenizer, q, a) for a in group]
                                 for q, group in zip(questions, answers)])
        return np.array([scored[g][j].mean().item() for g, j in where])

    def answers(self, prompts: list[str]) -> list[str]:
        out = greedy_ids(self.model, [self._prompt(q) for q in prompts],
                         eos={self.tokenizer.eos_token_id}, max_tokens=self.max_tokens)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in out]


def by_question(pairs: list[tuple[str, str]]
                ) -> tuple[list[str], list[list[str]], list[tuple[int, int]]]:
    """(question, answer) pairs grouped by question: the distinct questions, each one's answers,
    and where each pair went (question index, answer index)."""
    index: dict[str, int] = {}
    answers: list[list[str]] = []
    where = []
    for question, answer in pairs:
        g = index.setdefault(question, len(index))
        if g == len(answers):
            answers.append([])
        where.append((g, len(answers[g])))
        answers[g].append(answer)
    return list(index), answers, where


def answer_ids(tokenizer, question: str, answer: str) -> list[int]:
    """The tokens of `answer` as the chat template puts it after the user's `question`."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}],
                                         tokenize=False)
    return tokenizer(full[len(prompt):], add_special_tokens=False).input_ids


def peft_rows(labels: list[str]) -> AbstractContextManager[dict[str, Any]]:
    """peft's mixed-adapter batch: row j runs the adapter named labels[j]."""
    return nullcontext({"adapter_names": labels})


def _left_padded(model, prompts: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts' embeddings (T_i, D) as one batch that ends where each prompt ends: (B, T, D)
    inputs left-padded to the longest, (B, T) attention mask, (B, T) positions from 0 at each
    prompt's first token."""
    B, T, D = len(prompts), max(len(p) for p in prompts), prompts[0].shape[1]
    weight = model.get_input_embeddings().weight  # the batch goes where the model is
    inputs = torch.zeros(B, T, D, dtype=weight.dtype, device=weight.device)
    mask = torch.zeros(B, T, dtype=torch.long, device=weight.device)
    for b, p in enumerate(prompts):
        inputs[b, T - len(p):], mask[b, T - len(p):] = p, 1
    return inputs, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model, prompts: list[torch.Tensor], answers: list[list[list[int]]],
                   adapters: list | None = None, batch_size: int = 16,
                   rows_with: AdapterRows = peft_rows) -> list[list[torch.Tensor]]:
    """For prompt i's embeddings (Tp_i, D), the (Ta,) log-probability of each token of each of
    its answers answers[i]. A prompt runs once; its answers continue from its key-value cache
    (TOFU asks 7 answers of a question). With `adapters`, prompt i and its answers run through
    adapter adapters[i] (`rows_with` says how). `batch_size`: answers per forward. Computed on
    the model's device; returned on the CPU."""
    out = []
    with torch.inference_mode():
        start = 0
        while start < len(prompts):
            end, rows = start + 1, len(answers[start])
            while end < len(prompts) and rows + len(answers[end]) <= batch_size:
                rows, end = rows + len(answers[end]), end + 1
            out += _score_batch(model, prompts[start:end], answers[start:end],
                                adapters[start:end] if adapters else None, rows_with)
            start = end
    return out


def _score_batch(model, prompts, answers, adapters, rows_with) -> list[list[torch.Tensor]]:
    inputs, mask, positions = _left_padded(model, prompts)  # (G, Tp, D), (G, Tp), (G, Tp)
    with rows_with(adapters) if adapters else nullcontext({}) as kwargs:
        result = model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                       use_cache=True, **kwargs)
    first = result.logits[:, -1].float().log_softmax(-1)  # (G, V): each answer's first token

    flat = [(g, a) for g, group in enumerate(answers) for a in group]  # one row per answer
    device = inputs.device
    owner = torch.tensor([g for g, _ in flat], device=device)  # (R,) prompt of each row
    R, Ta = len(flat), max(1, max(len(a) for _, a in flat) - 1)  # the last token predicts nothing
    ids = torch.zeros(R, Ta, dtype=torch.long)  # (R, Ta), right-padded
    answer_mask = torch.zeros(R, Ta, dtype=torch.long)  # (R, Ta)
    for r, (_, a) in enumerate(flat):
        fed = a[:-1]  # the tokens after which the next one is scored
        ids[r, :len(fed)], answer_mask[r, :len(fed)] = torch.tensor(fed, dtype=torch.long), 1
    ids, answer_mask = ids.to(device), answer_mask.to(device)  # filled here, moved once
    cache = result.past_key_values
    cache.reorder_cache(owner)  # (G, ...) -> (R, ...): each row continues its prompt
    with rows_with([adapters[g] for g, _ in flat]) if adapters else nullcontext({}) as kwargs:
        logits = model(input_ids=ids, attention_mask=torch.cat([mask[owner], answer_mask], 1),
                       position_ids=mask.sum(-1)[owner, None] + torch.arange(Ta, device=device),
                       past_key_values=cache, **kwargs).logits  # (R, Ta, V)

    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    for r, (g, a) in enumerate(flat):
        fed = len(a[:-1])
        logprobs = torch.cat([first[g:g + 1], logits[r, :fed].float().log_softmax(-1)])
        tokens = torch.tensor(a, dtype=torch.long, device=device)[:, None]  # (len(a), 1)
        out[g].append(logprobs[:len(a)].gather(1, tokens)[:, 0].cpu())
    return out


def greedy_ids(model, prompts: list[torch.Tensor], eos: set[int], max_tokens: int,
               adapters: list[list] | None = None, batch_size: int = 8,
               rows_with: AdapterRows = peft_rows) -> list[list[int]]:
    """Greedy continuation (token ids, up to the first of `eos`) of each prompt's embeddings
    (T_i, D). With `adapters`, prompt i runs once per adapter in adapters[i] (`rows_with` says
    how) and each next token is the argmax of their mean probabilities (SISA's output ensemble;
    one adapter: that adapter alone)."""
    names = adapters or [[None]] * len(prompts)
    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = names[i:i + batch_size]
            labels = [name for group in batch for name in group]  # one row per adapter
            with rows_with(labels) if adapters else nullcontext({}) as kwargs:
                out += _greedy_batch(model, prompts[i:i + batch_size], batch, eos, max_tokens,
                                     kwargs)
    return out


def _greedy_batch(model, prompts, names, eos, max_tokens, kwargs) -> list[list[int]]:
    owner = torch.tensor([j for j, group in enumerate(names) for _ in group])  # (B,) prompt of row
    B = len(owner)  # one row per adapter
    # (B, T, D), (B, T), (B, T)
    inputs, mask, positions = _left_padded(model, [prompts[j] for j in owner.tolist()])
    result = model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                   use_cache=True, **kwargs)
    tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_tokens):
        # Summed on the CPU: index_add_ on a GPU adds in no fixed order, and a tie could flip.
        probs = result.logits[:, -1].float().softmax(-1).cpu()  # (B, V)
        mean = probs.new_zeros(len(prompts), probs.shape[1]).index_add_(0, owner, probs)  # (P, V)
        chosen = mean.argmax(-1)  # (P,) the sums' argmax is the means'
        for j, token in enumerate(chosen.tolist()):
            if not done[j]:
                done[j] = token in eos
                if not done[j]:
                    tokens[j].append(token)
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        positions = positions[:, -1:] + 1
        result = model(input_ids=chosen[owner][:, None].to(mask.device), attention_mask=mask,
                       position_ids=positions, past_key_values=result.past_key_values,
                       use_cache=True, **kwargs)
    return tokens
