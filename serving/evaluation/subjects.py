"""The product as a metric sees it (guard.metrics.Subject): questions in, scores and answers out.

`ServedSubject`: each question as a chat request through the serving pipeline (guard check of
the request, ECO corruption of a flagged prompt, the request's APA shard mixture), scored and
answered by one transformers model that holds each mixture as a peft adapter: the hf engine's
computation, with teacher forcing for the scores. `EnsembleSubject`: SISA's aggregation, the
shard adapters' output probabilities averaged token by token.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from adapters import ShardStore
from guard import ANSWER_TOKENS, answer_ids, chat_prompt, greedy_ids, token_logprobs

from ..engines import LoRA
from ..pipeline import Pipeline

BASE = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


class AdapterModel:
    """The base model, with peft adapters loaded by name on first use (least recently used
    dropped beyond `capacity`)."""

    def __init__(self, model_path: Path, capacity: int = 16):  # a K=4 mixture: ~60 MB
        from transformers import AutoModelForCausalLM

        self.base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.model = self.base  # the peft wrapper once an adapter is loaded
        self.capacity = capacity
        self._loaded: OrderedDict[str, None] = OrderedDict()

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.base.get_input_embeddings()(torch.tensor(token_ids))  # (T, D)

    def load(self, lora: LoRA | None) -> str:
        """The adapter name of `lora` in a mixed-adapter batch (BASE for None)."""
        if lora is None:
            return BASE
        if lora.name in self._loaded:
            self._loaded.move_to_end(lora.name)
            return lora.name
        from peft import PeftModel

        if self.model is self.base:
            self.model = PeftModel.from_pretrained(self.base, lora.path, adapter_name=lora.name)
            self.model.eval()
        else:
            self.model.load_adapter(lora.path, adapter_name=lora.name)
        self._loaded[lora.name] = None
        return lora.name

    def trim(self, keep: set[str]) -> None:
        for name in list(self._loaded):
            if len(self._loaded) <= self.capacity:
                break
            if name not in keep:
                with warnings.catch_warnings():  # batches name their adapters; none is "active"
                    warnings.filterwarnings("ignore", message=".*was active which is now deleted")
                    self.model.delete_adapter(name)
                del self._loaded[name]


class ServedSubject:
    """Questions as the server answers them; remembers which ones the guard flagged."""

    def __init__(self, model: AdapterModel, tokenizer, pipeline: Pipeline):
        self.model, self.tokenizer, self.pipeline = model, tokenizer, pipeline
        self.flagged: dict[str, bool] = {}

    def _batches(self, questions: list[str], size: int = 8):
        """Per engine batch: (question indices, prompt embeddings (T, D) each, adapter names or
        None when no adapter is loaded), the batch's adapters held until the next one."""
        for i in range(0, len(questions), size):
            prompts = [self.pipeline.chat([{"role": "user", "content": q}])
                       for q in questions[i:i + size]]
            for question, prompt in zip(questions[i:i + size], prompts):
                self.flagged[question] = prompt.embeds is not None
            names = [self.model.load(p.lora) for p in prompts]
            embeds = [p.embeds if p.embeds is not None else self.model.embed(p.token_ids)
                      for p in prompts]
            try:
                yield range(i, i + len(prompts)), embeds, (
                    names if self.model.model is not self.model.base else None)
            finally:
                self.pipeline.release(prompts)
                self.model.trim(set(names))

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        out = []
        for rows, embeds, names in self._batches([q for q, _ in pairs]):
            scored = token_logprobs(self.model.model, embeds,
                                    [answer_ids(self.tokenizer, *pairs[r]) for r in rows],
                                    adapters=names)
            out += [t.mean().item() for t in scored]
        return np.array(out)

    def answers(self, questions: list[str]) -> list[str]:
        out = []
        for _, embeds, names in self._batches(questions):
            ids = greedy_ids(self.model.model, embeds, {self.tokenizer.eos_token_id},
                             ANSWER_TOKENS,
                             adapters=None if names is None else [[n] for n in names])
            out += [self.tokenizer.decode(t, skip_special_tokens=True) for t in ids]
        return out

    def flagged_rate(self, questions: list[str]) -> float:
        return float(np.mean([self.flagged[q] for q in questions]))


class EnsembleSubject:
    """SISA: every shard adapter answers; their probabilities are averaged per token."""

    def __init__(self, model: AdapterModel, tokenizer, store: ShardStore):
        self.model, self.tokenizer = model, tokenizer
        self.loras = [LoRA(f"shard-{v.shard}-{v.id}", v.path) for v in store.current_versions()]

    @property
    def names(self) -> list[str]:
        """The shard adapters' names, loaded (again, if another subject's batches evicted them)."""
        return [self.model.load(lora) for lora in self.loras]

    def _prompt(self, question: str) -> torch.Tensor:
        ids, _ = chat_prompt(self.tokenizer, [{"role": "user", "content": question}])
        return self.model.embed(ids)  # (T, D)

    def logprobs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        names = self.names
        k = len(names)
        prompts = [self._prompt(q) for q, _ in pairs for _ in range(k)]
        answers = [answer_ids(self.tokenizer, q, a) for q, a in pairs for _ in range(k)]
        scored = token_logprobs(self.model.model, prompts, answers, adapters=names * len(pairs))
        out = []
        for i in range(len(pairs)):
            per_shard = torch.stack(scored[i * k:(i + 1) * k])  # (K, Ta)
            out.append((per_shard.logsumexp(0) - np.log(k)).mean().item())  # log mean prob
        return np.array(out)

    def answers(self, questions: list[str]) -> list[str]:
        ids = greedy_ids(self.model.model, [self._prompt(q) for q in questions],
                         {self.tokenizer.eos_token_id}, ANSWER_TOKENS,
                         adapters=[self.names] * len(questions))
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in ids]
