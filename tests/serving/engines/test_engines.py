"""The engine contract, run against every registered engine on the tiny model.

The reference for every expectation is transformers (+ peft) called directly, not an engine.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import vllm_mixtures
from adapters import LORA_TARGET_MODULES, Version, combine
from base import resolve_device
from serving.engines import (GREEDY_BELOW, EngineError, EngineRequest, LoRA, Sampling, VLLMEngine,
                             engine_class, engine_names)

PROMPTS = ["Where does Kalo Venmi live?", "What pet does Dar Torsel have?"]
_ids = itertools.count()


class Harness:
    """Runs one engine in its own event loop, so tests can call it synchronously."""

    def __init__(self, name: str, model_dir, max_model_len: int = 512,
                 prefix_caching: bool = False, rank_scales: bool = True, device: str = "cpu"):
        self.loop = asyncio.new_event_loop()
        self.engine = engine_class(name)(
            model_dir, dtype="float32", max_model_len=max_model_len, max_num_seqs=8,
            max_loras=2, max_lora_rank=16, kv_cache_gib=1, prefix_caching=prefix_caching,
            rank_scales=rank_scales, device=device,
        )
        self.loop.run_until_complete(self.engine.start())
        self.logprobs: dict[str, list[dict[int, float]]] = {}  # request id -> per token (choice 0)

    async def _one(self, request: EngineRequest):
        tokens = {i: [] for i in range(request.sampling.n)}
        text = {i: "" for i in range(request.sampling.n)}
        finish = {}
        logprobs = self.logprobs.setdefault(request.request_id, [])
        async for deltas in self.engine.generate(request):
            for d in deltas:
                tokens[d.index] += d.token_ids
                text[d.index] += d.text
                if d.finish_reason:
                    finish[d.index] = d.finish_reason
                if d.index == 0:
                    logprobs += d.logprobs
        return [(tokens[i], text[i], finish.get(i)) for i in range(request.sampling.n)]

    def request(self, ids, sampling, embeds=None, lora=None, tenant=None) -> EngineRequest:
        return EngineRequest(f"t{next(_ids)}", list(ids), sampling, embeds, lora, tenant)

    def generate(self, *requests: EngineRequest):
        """All requests concurrently; each result is [(token_ids, text, finish_reason)] per choice."""
        async def all_():
            return await asyncio.gather(*(self._one(r) for r in requests))
        return self.loop.run_until_complete(all_())

    def evict(self, name: str) -> None:
        self.loop.run_until_complete(self.engine.evict(name))

    def close(self):
        self.loop.run_until_complete(self.engine.shutdown())
        self.loop.close()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def loras(tiny_model_dir, tmp_path_factory):
    """Two random adapters on attention and MLP projections (never the embedding layer)."""
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=32, init_lora_weights=False,
                            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
        path = tmp_path_factory.mktemp(f"lora{seed}")
        get_peft_model(base, config).save_pretrained(path)
        out.append(LoRA(name=f"lora-{seed}", path=path))
    return out


@pytest.fixture(scope="module", params=engine_names())
def engine(request, tiny_model_dir):
    harness = Harness(request.param, tiny_model_dir)
    yield harness
    harness.close()


def greedy(max_tokens=12, **kw) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, **kw)


def reference_greedy(model, ids, max_tokens=12, lora=None) -> list[int]:
    if lora is not None:
        model = PeftModel.from_pretrained(model, lora.path)
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    if lora is not None:
        model.unload()  # restores the base modules for the next test
    return out[0, len(ids):].tolist()


def encode(tokenizer, text) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_greedy_tokens_equal_transformers(engine, reference):
    tokenizer, model = reference
    for prompt in PROMPTS:
        ids = encode(tokenizer, prompt)
        [[(tokens, text, finish)]] = engine.generate(engine.request(ids, greedy()))
        expected = reference_greedy(model, ids)
        assert tokens == expected
        assert text == tokenizer.decode(expected, skip_special_tokens=True)
        assert finish == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")


def test_prompt_embeds_give_the_same_output_as_their_token_ids(engine, reference):
    tokenizer, model = reference
    ids = encode(tokenizer, PROMPTS[0])
    embeds = model.get_input_embeddings()(torch.tensor(ids)).detach()  # [T, d]
    [from_ids], [from_embeds] = engine.generate(
        engine.request(ids, greedy()), engine.request(ids, greedy(), embeds=embeds))
    assert from_embeds[0] == from_ids[0]


def test_lora_output_equals_peft_reference_and_differs_from_base(engine, reference, loras):
    tokenizer, model = reference
    ids = encode(tokenizer, PROMPTS[1])
    [[(tokens, _, _)]] = engine.generate(engine.request(ids, greedy(), lora=loras[0]))
    assert tokens == reference_greedy(model, ids, lora=loras[0])
    assert tokens != reference_greedy(model, ids)


def test_concurrent_mix_of_token_and_embedding_prompts_under_different_loras(
        engine, reference, loras):
    # DESIGN.md: one vLLM 0.32 CPU batch mixing token prompts and prompt_embeds under different
    # LoRAs could kill the engine. Each request must get what it gets alone.
    tokenizer, model = reference
    ids = encode(tokenizer, PROMPTS[0])
    embeds = model.get_input_embeddings()(torch.tensor(ids)).detach()
    requests = [
        dict(), dict(embeds=embeds), dict(lora=loras[0]), dict(embeds=embeds, lora=loras[1]),
        dict(lora=loras[1]), dict(embeds=embeds, lora=loras[0]),
    ]
    together = engine.generate(*(engine.request(ids, greedy(), **r) for r in requests))
    alone = [engine.generate(engine.request(ids, greedy(), **r))[0] for r in requests]
    assert [t[0][0] for t in together] == [a[0][0] for a in alone]
    assert together[0][0][0] != together[2][0][0]  # the adapters really were applied


def test_an_evicted_adapter_is_read_again_from_its_files(engine, reference, loras):
    # The server evicts a superseded stack (its weights may hold forgotten data). An engine that
    # still held it would serve the old weights under its name (DESIGN.md); served after the
    # eviction from other files, the name must give those files' output.
    tokenizer, model = reference
    ids = encode(tokenizer, PROMPTS[1])
    [[(before, _, _)]] = engine.generate(
        engine.request(ids, greedy(), lora=LoRA("superseded", loras[0].path)))
    engine.evict("superseded")
    engine.evict("never-loaded")  # a name the engine does not hold: nothing to do
    [[(after, _, _)]] = engine.generate(
        engine.request(ids, greedy(), lora=LoRA("superseded", loras[1].path)))
    assert before == reference_greedy(model, ids, lora=loras[0])
    assert after == reference_greedy(model, ids, lora=loras[1]) != before


def test_stop_string_ends_output_before_it(engine, reference):
    tokenizer, model = reference
    ids = encode(tokenizer, PROMPTS[0])
    full = tokenizer.decode(reference_greedy(model, ids, max_tokens=20), skip_special_tokens=True)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), f"reference output too short to pick a stop string: {full!r}"
    [[(_, text, finish)]] = engine.generate(engine.request(ids, greedy(20, stop=(stop,))))
    assert text == full[: full.index(stop)]
    assert finish == "stop"


def test_max_tokens_bounds_the_output(engine, reference):
    tokenizer, _ = reference
    ids = encode(tokenizer, PROMPTS[1])
    sampling = Sampling(max_tokens=5, temperature=1.0, seed=3)
    [[(tokens, _, finish)]] = engine.generate(engine.request(ids, sampling))
    assert len(tokens) <= 5
    assert finish == ("length" if len(tokens) == 5 else "stop")


@pytest.mark.parametrize("temperature", [1e-99, 5e-324, 9e-6])
def test_a_temperature_below_greedy_below_decodes_greedily(engine, reference, temperature):
    """As vLLM does: dividing the logits by 1e-99 gives inf, which the hf engine once sampled
    from and failed on (found by bench/bench_fuzz.py)."""
    tokenizer, model = reference
    ids = encode(tokenizer, PROMPTS[0])
    sampling = Sampling(max_tokens=12, temperature=temperature, top_p=0.5, seed=1)
    [[(tokens, _, _)]] = engine.generate(engine.request(ids, sampling))
    assert temperature < GREEDY_BELOW and tokens == reference_greedy(model, ids)


def test_sampling_with_a_seed_is_reproducible_and_n_gives_n_choices(engine, reference):
    tokenizer, _ = reference
    ids = encode(tokenizer, PROMPTS[0])
    sampling = Sampling(max_tokens=10, temperature=1.0, seed=7, n=3)
    first, second = engine.generate(engine.request(ids, sampling), engine.request(ids, sampling))
    assert len(first) == 3 and all(choice[2] in ("stop", "length") for choice in first)
    assert [c[0] for c in first] == [c[0] for c in second]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_the_hf_engine_runs_on_its_device_and_answers_as_transformers_on_the_cpu(
        device, tiny_model_dir, reference, loras):
    """The hf engine on the configured device: its weights and adapters there, prompt
    embeddings given on the CPU (the pipeline's) moved to it; in one batch, greedy tokens with
    and without an adapter as the CPU reference gives them."""
    device = resolve_device(device)
    harness = Harness("hf", tiny_model_dir, device=device)
    try:
        tokenizer, model = reference
        ids = encode(tokenizer, PROMPTS[1])
        embeds = model.get_input_embeddings()(torch.tensor(ids)).detach()  # [T, d] on the CPU
        plain, from_embeds, adapted = harness.generate(
            harness.request(ids, greedy()), harness.request(ids, greedy(), embeds=embeds),
            harness.request(ids, greedy(), lora=loras[0]))
        assert harness.engine._base.device.type == torch.device(device).type
        assert plain[0][0] == from_embeds[0][0] == reference_greedy(model, ids)
        assert adapted[0][0] == reference_greedy(model, ids, lora=loras[0]) != plain[0][0]
    finally:
        harness.close()


# --- shard mixtures in the engine -------------------------------------------------------------

WEIGHTS = [(0.5, 0.3, 0.2), (0.0, 1.0, 0.0), (0.1, 0.15, 0.75)]


@pytest.fixture(scope="module")
def shards(tiny_model_dir, tmp_path_factory) -> list[Version]:
    """Three shard adapters (r=4, each its own alpha) on the projections Lethe trains."""
    versions = []
    for k, alpha in enumerate((4, 8, 16)):
        torch.manual_seed(10 + k)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        config = LoraConfig(r=4, lora_alpha=alpha, init_lora_weights=False,
                            target_modules=list(LORA_TARGET_MODULES))
        path = tmp_path_factory.mktemp(f"shard{k}")
        get_peft_model(base, config).save_pretrained(path)
        versions.append(Version(k, f"v{k}", path))
    return versions


def materialise(parts: list[tuple[Version, float]], path) -> LoRA:
    """The concatenated mixture written as one peft adapter (adapters.combine)."""
    state, config = combine(parts)
    path.mkdir()
    save_file(state, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps(config))
    return LoRA(path.name, path)


def relative_error(got: list[dict[int, float]], expected: list[dict[int, float]]) -> float:
    """Largest per-token max |got - expected| / max |expected| over the top log-probabilities
    (log-softmax of the logits), which must name the same tokens."""
    assert len(got) == len(expected) > 0
    worst = 0.0
    for g, e in zip(got, expected):
        assert g.keys() == e.keys()
        worst = max(worst, max(abs(g[t] - e[t]) for t in e) / max(abs(v) for v in e.values()))
    return worst


def test_in_engine_mixtures_equal_the_materialised_mixtures_in_one_mixed_batch(
        engine, reference, shards, tmp_path):
    """A stacked adapter with per-request scales is exactly the weighted mixture: in one batch
    mixing weight vectors, token prompts, corrupted prompt embeddings and a request without an
    adapter, each answer equals the materialised mixture's (greedy tokens; log-probabilities to
    fp32 rounding); scales of 0 give the base model."""
    if isinstance(engine.engine, VLLMEngine):  # the plugin computes them in vLLM's process
        assert engine.engine.plugin_active
    tokenizer, model = reference
    stack = materialise([(v, 1.0) for v in shards], tmp_path / "stack")
    mixtures = [materialise(list(zip(shards, w)), tmp_path / f"mix-{i}")
                for i, w in enumerate(WEIGHTS)]
    ids, corrupted_ids = encode(tokenizer, PROMPTS[0]), encode(tokenizer, PROMPTS[1])
    torch.manual_seed(0)
    embeds = model.get_input_embeddings()(torch.tensor(corrupted_ids)).detach()
    corrupted = embeds + 0.5 * torch.randn_like(embeds)  # (T, d) as the guard would
    sampling = greedy(8, logprobs=5)

    def in_engine(w, prompt_embeds=None):
        scales = tuple(x for x in w for _ in range(4))  # shard k's weight over its 4 ranks
        return engine.request(corrupted_ids if prompt_embeds is not None else ids, sampling,
                              prompt_embeds, LoRA("stack", stack.path, scales))

    batch = [in_engine(w, e) for w in WEIGHTS for e in (None, corrupted)]
    batch += [engine.request(ids, sampling), in_engine((0.0, 0.0, 0.0))]
    expected = [engine.request(corrupted_ids if e is not None else ids, sampling, e, mix)
                for mix in mixtures for e in (None, corrupted)]
    expected += [engine.request(ids, sampling), engine.request(ids, sampling)]
    got_out, expected_out = engine.generate(*batch), engine.generate(*expected)

    assert [o[0][0] for o in got_out] == [o[0][0] for o in expected_out]
    for g, e in zip(batch, expected):
        assert relative_error(engine.logprobs[g.request_id],
                              engine.logprobs[e.request_id]) < 1e-5
    # the weights really differ: different vectors, different answers (to the same prompt)
    assert len({tuple(got_out[i][0][0]) for i in (0, 2, 4, 6)}) > 1


def test_in_engine_mixture_scales_are_checked(engine, shards, tmp_path):
    stack = materialise([(v, 1.0) for v in shards], tmp_path / "stack-bad")
    bad = engine.request([1, 2, 3], greedy(2), lora=LoRA("stack-bad", stack.path,
                                                          (1.0, float("nan")) * 6))
    with pytest.raises(EngineError, match="scales"):
        engine.generate(bad)
    # and the engine serves on
    [[(tokens, _, _)]] = engine.generate(engine.request([1, 2, 3], greedy(2)))
    assert len(tokens) > 0


def test_a_prompt_cached_under_one_weight_vector_is_not_reused_under_another(
        engine, reference, shards, tmp_path):
    # Under other scales of the same stacked adapter a prompt's KV differs, so an engine that
    # caches it must not reuse it (no engine caches it by default; vLLM's prefix cache, turned
    # on, is tested below).
    assert_no_kv_reuse_across_weight_vectors(engine, reference, shards, tmp_path)


def test_vllm_prefix_caching_is_off_and_salted_per_weight_vector_when_turned_on(
        engine, reference, shards, tmp_path, tiny_model_dir):
    # Off: the prefix cache would tell a client whether the guard fired (serving/engines/vllm.py)
    if not isinstance(engine.engine, VLLMEngine):
        pytest.skip("vLLM's prefix cache")
    assert not engine.engine._llm.vllm_config.cache_config.enable_prefix_caching
    cached = Harness("vllm", tiny_model_dir, prefix_caching=True)
    try:
        assert cached.engine._llm.vllm_config.cache_config.enable_prefix_caching
        assert_no_kv_reuse_across_weight_vectors(cached, reference, shards, tmp_path)
        assert_no_kv_reuse_across_tenants(cached, reference)
    finally:
        cached.close()


def assert_no_kv_reuse_across_tenants(harness, reference):
    """With the cache on, a tenant's repeated prompt hits its own blocks, and the same prompt from
    another tenant (or from no tenant) hits none: one tenant cannot time another's prompts."""
    tokenizer, _ = reference
    ids = encode(tokenizer, " ".join(reversed(PROMPTS)) * 8)  # several KV blocks
    cached_tokens: dict[str, int] = {}  # request id -> vLLM's count of prefix-cache hits
    generate = harness.engine._llm.generate

    async def spy(prompt, params, request_id, **kw):
        async for output in generate(prompt, params, request_id, **kw):
            cached_tokens[request_id] = output.num_cached_tokens or 0
            yield output

    harness.engine._llm.generate = spy
    try:
        order = ["a", "a", "b", None, None]
        requests = [harness.request(ids, greedy(1), tenant=t) for t in order]
        for r in requests:  # one at a time: each finds what the earlier ones left
            harness.generate(r)
    finally:
        del harness.engine._llm.generate
    hits = [cached_tokens[r.request_id] for r in requests]
    assert hits[0] == 0 and hits[1] > 0  # the cache is on, and a tenant reuses its own blocks
    assert hits[2] == 0 and hits[3] == 0  # another tenant, or none, reuses none of them
    assert hits[4] > 0  # requests without a tenant share theirs (no keys: one tenant)


def assert_no_kv_reuse_across_weight_vectors(engine, reference, shards, tmp_path):
    """The same long prompt under two weight vectors of one stacked adapter, one after the other,
    each equals its materialised mixture's answer (a cache keyed by the adapter alone would
    serve the second from the first's KV)."""
    tokenizer, _ = reference
    stack = materialise([(v, 1.0) for v in shards], tmp_path / "stack-cache")
    ids = encode(tokenizer, " ".join(PROMPTS * 8))  # several KV blocks
    sampling = greedy(6, logprobs=5)
    for i, w in enumerate(WEIGHTS[:2]):
        scales = tuple(x for x in w for _ in range(4))
        mixture = materialise(list(zip(shards, w)), tmp_path / f"mix-cache-{i}")
        first = engine.request(ids, sampling, lora=LoRA("stack-cache", stack.path, scales))
        [[got]] = engine.generate(first)
        expected = engine.request(ids, sampling, lora=mixture)
        [[want]] = engine.generate(expected)
        assert got[0] == want[0]
        assert relative_error(engine.logprobs[first.request_id],
                              engine.logprobs[expected.request_id]) < 1e-5


def test_vllm_refuses_to_serve_without_its_plugin_in_the_engine_process(
        tiny_model_dir, monkeypatch):
    # Without the plugin, vLLM would ignore the scales: every shard at weight 1, quarantined
    # ones too. VLLM_PLUGINS without it keeps it out of vLLM's engine process: refused before
    # vLLM starts. (That the started engine's own check sees the plugin missing:
    # test_vllm_serves_materialised_mixtures_without_its_plugin.)
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
    with pytest.raises(EngineError, match="without Lethe's plugin"):
        Harness("vllm", tiny_model_dir)
    monkeypatch.setenv("VLLM_PLUGINS", f"lora_filesystem_resolver,{vllm_mixtures.NAME}")
    assert vllm_mixtures.loads_in_vllm()


def test_vllm_serves_materialised_mixtures_without_its_plugin(
        tiny_model_dir, monkeypatch, reference, loras):
    # route.mixing: materialised needs no plugin, so it runs on any platform vLLM supports
    # (the plugin supports CPU and CUDA): started without it in any process, vLLM serves an
    # adapter as peft does, and refuses a request with scales rather than ignore them.
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
    harness = Harness("vllm", tiny_model_dir, rank_scales=False)
    try:
        assert harness.engine.plugin_active is False  # what the engine's process reports
        tokenizer, model = reference
        ids = encode(tokenizer, PROMPTS[1])
        [[(tokens, _, _)]] = harness.generate(harness.request(ids, greedy(), lora=loras[0]))
        assert tokens == reference_greedy(model, ids, lora=loras[0])
        scaled = LoRA(loras[0].name, loras[0].path, (1.0,) * 8)
        with pytest.raises(EngineError, match="scales"):
            harness.generate(harness.request(ids, greedy(), lora=scaled))
    finally:
        harness.close()
