"""TOFU's metrics, each checked against a value computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, DynamicCache

from guard import (Corruption, GuardError, Item, MetricError, ModelSubject, answer_ids,
                   by_question, forget_quality, greedy_ids, metric, metric_names, model_utility,
                   register_metric, rouge_l_recall, token_logprobs, truth_ratio_closer_to_1,
                   truth_ratio_true_better)


class Uniform(torch.nn.Module):
    """A language model that gives every token of its vocabulary the same probability, 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.embedding = torch.nn.Embedding(vocab, 8)

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, inputs_embeds=None, input_ids=None, **kwargs):  # (B, T, D) or (B, T)
        shape = (inputs_embeds if inputs_embeds is not None else input_ids).shape[:2]
        return SimpleNamespace(logits=torch.zeros(*shape, self.vocab),
                               past_key_values=DynamicCache())


@pytest.fixture(scope="module")
def uniform(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return Uniform(len(tokenizer)), tokenizer


ITEMS = [Item("Where does Vosmi Ulkathi live?", "Vosmi Ulkathi lives in Quillmoor.",
              paraphrased_answer="Quillmoor is where Vosmi Ulkathi lives.",
              perturbed_answers=("Vosmi lives in Tolvik.", "Vosmi lives in Brinnick.",
                                 "Vosmi lives by the sea.")),
         Item("What does Vosmi Ulkathi do?", "Vosmi Ulkathi is a beekeeper.",
              paraphrased_answer="A beekeeper.", perturbed_answers=("A clockmaker.",))]


def test_per_token_probability_of_a_uniform_model_is_one_over_the_vocabulary(uniform):
    model, tokenizer = uniform
    assert np.allclose(metric("probability")(ModelSubject(model, tokenizer), ITEMS), 1 / model.vocab)


def test_truth_ratio_of_a_model_with_no_preference_is_one(uniform):
    assert np.allclose(metric("truth_ratio")(ModelSubject(*uniform), ITEMS), [1.0, 1.0])


def test_options_probability_shares_the_mass_among_the_answer_and_its_perturbations(uniform):
    # every answer has per-token probability 1/V: 1 / (1 + number of perturbed answers)
    assert np.allclose(metric("probability_options")(ModelSubject(*uniform), ITEMS), [1 / 4, 1 / 2])


def test_rouge_l_recall_is_the_longest_common_word_subsequence_over_the_reference():
    # reference words: paris is the capital of france (6); in order in the prediction:
    # "the capital" (2); "Paris" and "is" come in the other order
    assert rouge_l_recall("The capital is Paris.", "Paris is the capital of France.") == 2 / 6
    assert rouge_l_recall("PARIS, is the capital of France!", "Paris is the capital of France.") == 1
    assert rouge_l_recall("", "Paris.") == 0 and rouge_l_recall("Paris", "") == 0


def test_truth_ratio_aggregates():
    ratios = np.array([0.5, 2.0])
    assert truth_ratio_true_better(ratios) == pytest.approx((0.5 + 0) / 2)  # max(0, 1 - r)
    assert truth_ratio_closer_to_1(ratios) == pytest.approx((0.5 + 0.5) / 2)  # min(r, 1 / r)


def test_forget_quality_is_the_ks_tests_p_value():
    # disjoint samples of 3 and 3: D = 1, reached by 2 of the C(6, 3) = 20 orderings
    assert forget_quality(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(0.1)
    assert forget_quality(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 1.0


def test_model_utility_is_the_harmonic_mean():
    assert model_utility([0.5, 1.0]) == pytest.approx(2 / (2 + 1))
    assert model_utility([0.9, 0.0, 0.3]) == 0.0
    with pytest.raises(MetricError, match="finite scores >= 0"):
        model_utility([0.5, float("nan")])


def test_metrics_are_registered_by_name_and_say_what_an_item_lacks(uniform):
    assert metric_names() == ["probability", "probability_options", "rouge_l", "truth_ratio"]
    with pytest.raises(MetricError, match="unknown metric 'bleu'; registered: probability, "):
        metric("bleu")
    with pytest.raises(MetricError, match="already registered"):
        register_metric("rouge_l", lambda *a: np.zeros(0))
    with pytest.raises(GuardError, match="truth_ratio needs paraphrased_answer"):
        metric("truth_ratio")(ModelSubject(*uniform), [Item("q?", "a.")])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


def test_greedy_answers_in_a_padded_batch_are_generates_answers_one_by_one(tiny):
    model, tokenizer = tiny
    subject = ModelSubject(model, tokenizer, max_tokens=12)
    questions = ["Where does Vosmi Ulkathi live?", "What?"]  # different lengths: left padding
    for question, answer in zip(questions, subject.answers(questions)):
        embeds = subject._prompt(question)
        with torch.inference_mode():
            out = model.generate(inputs_embeds=embeds[None], max_new_tokens=12, do_sample=False,
                                 attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
        assert answer == tokenizer.decode(out[0], skip_special_tokens=True)


def test_answers_scored_after_one_pass_over_their_prompt_equal_each_scored_alone(tiny):
    # prompts of different lengths in one forward (left padding), answers of different lengths
    # (right padding), a one-token answer, and more answers than fit one forward (batch_size 4)
    model, tokenizer = tiny
    subject = ModelSubject(model, tokenizer)
    questions = ["Where does Vosmi Ulkathi live?", "What?", "Who?"]
    answers = [[answer_ids(tokenizer, questions[0], a)
                for a in ("Quillmoor.", "Vosmi Ulkathi lives in the town of Quillmoor.")],
               [answer_ids(tokenizer, questions[1], "Yes."), [tokenizer.eos_token_id]],
               [answer_ids(tokenizer, questions[2], "No one, ever.")]]
    prompts = [subject._prompt(q) for q in questions]
    scored = token_logprobs(model, prompts, answers, batch_size=4)
    embedding = model.get_input_embeddings()
    with torch.inference_mode():
        for prompt, group, got in zip(prompts, answers, scored, strict=True):
            for answer, logprobs in zip(group, got, strict=True):
                row = torch.cat([prompt, embedding(torch.tensor(answer))])  # (T, D): no padding
                expected = model(inputs_embeds=row[None]).logits[0, len(prompt) - 1:-1]
                expected = expected.log_softmax(-1).gather(1, torch.tensor(answer)[:, None])[:, 0]
                assert logprobs.shape == (len(answer),)
                assert torch.allclose(logprobs, expected, atol=1e-5)


def test_pairs_are_grouped_by_question_and_each_pair_knows_where_it_went():
    questions, answers, where = by_question([("q1", "a"), ("q2", "b"), ("q1", "c")])
    assert questions == ["q1", "q2"] and answers == [["a", "c"], ["b"]]
    assert where == [(0, 0), (1, 0), (0, 1)]


def test_an_ensembles_next_token_is_the_argmax_of_its_adapters_mean_probabilities(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False), adapter_name="one")
    peft.add_adapter("two", LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=False))
    peft.eval()
    prompt = ModelSubject(model, tokenizer)._prompt("Where does Vosmi Ulkathi live?")  # (T, D)
    [ids] = greedy_ids(peft, [prompt], eos=set(), max_tokens=4, adapters=[["one", "two"]])
    expected, embeds = [], prompt
    with torch.inference_mode():
        for _ in range(4):  # no cache, no batch: each adapter alone, then the mean
            probs = []
            for name in ("one", "two"):
                peft.set_adapter(name)
                probs.append(peft(inputs_embeds=embeds[None]).logits[0, -1].softmax(-1))
            expected.append(int(torch.stack(probs).mean(0).argmax()))
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor(expected[-1:]))])
        # and one adapter's answer scored in a mixed batch equals that adapter alone
        answer = answer_ids(tokenizer, "Where does Vosmi Ulkathi live?", "Quillmoor.")
        [[one], [two]] = token_logprobs(peft, [prompt, prompt], [[answer], [answer]],
                                        adapters=["one", "two"])
        peft.set_adapter("two")
        [[alone]] = token_logprobs(peft, [prompt], [[answer]])
    assert ids == expected
    assert torch.allclose(two, alone, atol=1e-5)
    assert not torch.allclose(one, two)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_on_a_gpu_scores_and_answers_as_on_the_cpu(tiny, tiny_model_dir):
    # how `lethe guard tune` runs on model.device: tensors made where the model is, corruption
    # noise drawn on the CPU, scores back on the CPU
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny
    gpu = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gpu = gpu.to("cuda").eval()
    for corruption in (None, Corruption(sigma=0.5)):
        cpu_subject = ModelSubject(model, tokenizer, corruption, max_tokens=8)
        gpu_subject = ModelSubject(gpu, tokenizer, corruption, max_tokens=8)
        pairs = [(i.prompt, i.answer) for i in ITEMS] + [(ITEMS[0].prompt, "Tolvik.")]
        assert np.allclose(gpu_subject.logprobs(pairs), cpu_subject.logprobs(pairs), atol=1e-4)
        prompts = [i.prompt for i in ITEMS]
        assert gpu_subject.answers(prompts) == cpu_subject.answers(prompts)
