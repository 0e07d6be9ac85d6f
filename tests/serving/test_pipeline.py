"""The per-request pipeline: guard -> corrupted embeddings or tokens -> shard mixture, pinned
while the engine may still read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from adapters import RouteConfig, ShardStore
from guard import Corruption, Guard, SentenceEmbedder
from serving.metrics import Metrics
from serving.mixtures import ShardMixtures
from serving.model import input_embeddings
from serving.pipeline import GuardRefusal, Pipeline
from tests.serving.conftest import fact


@pytest.fixture(scope="module")
def minilm():
    return SentenceEmbedder()  # the store was partitioned on its vectors


@pytest.fixture
def parts(tiny_world, tiny_model_dir, minilm):
    home = Path(tiny_world()["home"])
    store = ShardStore(home / "apa")
    guard = Guard.exemplars_only(minilm, exemplar_threshold=0.8)
    guard.add_exemplar("request-1", [fact("person-0001")[0]])

    def pipeline(on_flag: str = "corrupt", quarantine: str = "matched", uniform: bool = True,
                 corruption: Corruption = Corruption("rand_noise_first_n", 1.0)) -> Pipeline:
        metrics = Metrics()
        return Pipeline(AutoTokenizer.from_pretrained(tiny_model_dir),
                        input_embeddings(tiny_model_dir), guard, corruption,
                        ShardMixtures(store, RouteConfig(scheme="semantic", top_m=1),
                                      metrics, quarantine), on_flag, metrics,
                        b"server secret", uniform)

    return pipeline, store


def chat(question: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


def served(pipeline: Pipeline, messages: list[dict]):
    """What the server does: the chat prompt's ids (counted against the context), then the
    pipeline on them."""
    return pipeline.chat(messages, pipeline.chat_tokens(messages))


def test_a_flagged_prompt_gets_corrupted_embeddings_of_the_content_tokens_only(parts):
    pipeline, _ = parts
    p = pipeline()
    plain = served(p, chat(fact("person-0002")[0]))
    flagged = served(p, chat(fact("person-0001")[0]))
    assert flagged.flagged and not plain.flagged
    # uniform prompts: the unflagged one reaches the engine as its own embeddings
    assert torch.equal(plain.embeds, p.embedding[torch.tensor(plain.token_ids)])
    assert plain.lora is not None
    clean = p.embedding[torch.tensor(flagged.token_ids)]  # (T, D)
    changed = (flagged.embeds != clean).any(dim=1)  # (T,)
    content = [p.tokenizer.encode(text, add_special_tokens=False)
               for text in ("Be brief.", fact("person-0001")[0])]
    assert changed.sum() == sum(map(len, content))  # every content token, none of the template
    assert flagged.lora is not None  # routed like any other request
    assert p.metrics.guard_flagged.labels("exemplar")._value.get() == 1


def test_flagged_and_unflagged_prompts_are_served_the_ids_the_length_check_counted(parts):
    """A chat is tokenized once, its mask with it: what was counted against the context is what
    the engine reads, flagged or not, and it is the template's own rendering."""
    pipeline, _ = parts
    p = pipeline()
    for question in (fact("person-0002")[0], fact("person-0001")[0]):  # plain, flagged
        messages = chat(question)
        template = p.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   tokenize=False)
        counted = p.chat_tokens(messages).ids
        assert counted == p.tokenizer.encode(template, add_special_tokens=False)
        assert served(p, messages).token_ids == counted
    assert p.metrics.guard_flagged.labels("exemplar")._value.get() == 1
    question = fact("person-0001")[0]
    ids = p.tokenizer.encode(question, add_special_tokens=False)
    as_text, as_ids = p.completion(ids, question), p.completion(ids)  # the text, or decoded
    assert as_text.token_ids == as_ids.token_ids == ids
    assert torch.equal(as_text.embeds, as_ids.embeds)  # the same text seeds the same noise


class CountingCorruption(Corruption):
    """The served corruption, counting the tokens it is given to corrupt."""

    def __call__(self, embeds, mask, seed):
        object.__setattr__(self, "tokens", getattr(self, "tokens", 0) + int(mask.sum()))
        return super().__call__(embeds, mask, seed)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_flagged_and_unflagged_prompts_take_one_path_unless_told_otherwise(parts, kind):
    """Timing must not tell a client whether the guard fired: with uniform prompts (the
    default), a flagged and an unflagged prompt reach the engine in one form (embeddings) after
    the same corruption work (every token the client wrote); without, an unflagged one is served
    as its token ids and corrupts nothing."""
    pipeline, _ = parts
    for uniform in (True, False):
        counting = CountingCorruption("rand_noise_first_n", 1.0)
        p = pipeline(uniform=uniform, corruption=counting)

        def prompt(question):
            """The prompt as served, and how many of its tokens the client wrote."""
            if kind == "chat":
                messages = chat(question)
                return served(p, messages), int(p.chat_tokens(messages).mask.sum())
            ids = p.tokenizer.encode(question, add_special_tokens=False)
            return p.completion(ids), len(ids)

        flagged, written = prompt(fact("person-0001")[0])
        assert flagged.flagged and counting.tokens == written > 0
        assert not torch.equal(flagged.embeds, p.embedding[torch.tensor(flagged.token_ids)])
        plain, written_plain = prompt(fact("person-0002")[0])
        assert not plain.flagged
        if uniform:
            assert counting.tokens == written + written_plain  # corrupted too, then not served
            assert plain.embeds.dtype == flagged.embeds.dtype
            assert torch.equal(plain.embeds, p.embedding[torch.tensor(plain.token_ids)])
        else:
            assert counting.tokens == written and plain.embeds is None
        p.release([flagged, plain])


def test_policy_refuse_raises(parts):
    pipeline, _ = parts
    with pytest.raises(GuardRefusal):
        served(pipeline("refuse"), chat(fact("person-0001")[0]))


def test_matched_quarantine_skips_only_the_shards_of_the_requests_a_prompt_is_about(parts):
    """`matched`: a flagged prompt avoids the shards of the pending requests the guard found it
    is about, so the other shards still answer it; about two, it avoids both; so it does where
    the guard cannot tell, and the shards of a request the guard holds no exemplars of."""
    pipeline, store = parts
    [mine] = store.lineage.shards_of(store.lineage.owner_sample_ids("person-0001"))
    theirs = 1 - mine  # the world has two shards
    other = next(s.owner for s in store.lineage.shard_samples(theirs))
    question = fact("person-0001")[0]
    p = pipeline(quarantine="matched")
    p.guard.add_exemplar("request-2", [fact(other)[0]])
    store.lineage.hold_quarantine("request-1", [mine])
    store.lineage.hold_quarantine("request-2", [theirs])
    try:
        about_one = served(p, chat(question))
        assert about_one.flagged and shards_of(about_one) == {theirs}  # the other shard answers
        both = served(p, chat(f"{question} {fact(other)[0]}"))
        assert both.flagged and both.lora is None  # both held shards skipped: the base model
        assert served(pipeline(quarantine="flagged"), chat(question)).lora is None
        query = p.guard.check([question]).vectors[0]
        assert p.resolver.resolve(query, flagged=True, unrelated=()) is None  # cannot tell
        store.lineage.hold_quarantine("request-3", [theirs])  # a replica yet to hear of it
        assert served(p, chat(question)).lora is None
        p.release([about_one])
    finally:
        store.lineage.release_quarantine(["request-1", "request-2", "request-3"])


def test_a_mixture_in_flight_survives_a_retrain_until_released(parts):
    pipeline, store = parts
    p = pipeline()
    prompt = served(p, chat(fact("person-0003")[0]))
    [shard] = shards_of(prompt)
    store.forget_samples([s.id for s in store.lineage.shard_samples(shard)][:1])  # new version

    p.sweep()
    assert prompt.lora.path.exists()  # the engine may not have read it yet
    p.release([prompt])
    p.sweep()
    assert not prompt.lora.path.exists()  # superseded weights are deleted once unused


def shards_of(prompt) -> set[int]:
    """The shards with weight in a prompt's mixture: of a stack (in-engine mixing), those whose
    rank components it scales by more than 0."""
    parts = json.loads((prompt.lora.path / "mixture.json").read_text())["parts"]
    if prompt.lora.scales is None:
        return {part["shard"] for part in parts}
    r = len(prompt.lora.scales) // len(parts)  # every shard has the same rank here
    return {part["shard"] for i, part in enumerate(parts)
            if any(prompt.lora.scales[i * r:(i + 1) * r])}


def test_flagged_prompts_skip_the_shards_that_pending_forget_requests_hold(parts):
    pipeline, store = parts
    [held] = store.lineage.shards_of(store.lineage.owner_sample_ids("person-0001"))
    neighbour = next(s.owner for s in store.lineage.shard_samples(held) if s.owner != "person-0001")
    forgotten, other = chat(fact("person-0001")[0]), chat(fact(neighbour)[0])
    unheld = pipeline(quarantine="none")
    assert shards_of(served(unheld, forgotten)) == shards_of(served(unheld, other)) == {held}
    store.lineage.hold_quarantine("request-1", [held])
    try:
        flagged_only, everyone = pipeline(quarantine="flagged"), pipeline(quarantine="all")
        assert held not in shards_of(served(flagged_only, forgotten))
        assert shards_of(served(flagged_only, other)) == {held}  # not flagged: served as before
        assert held not in (shards_of(served(everyone, forgotten))
                            | shards_of(served(everyone, other)))
        assert shards_of(served(unheld, forgotten)) == {held}
    finally:
        store.lineage.release_quarantine(["request-1"])
