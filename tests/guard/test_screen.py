"""The guard's first stage (guard/screen.py, guard/static.py): MiniLM reads a number of pieces
fixed by the prompt's length, the pieces nearest forgotten content, and a question hidden in a
long prompt is still flagged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import tokenizers

from adapters import synth_people
from guard import Guard, GuardError, general_prompts, save_model, train_guard, views
from guard.embed import _weights_digest
from guard.screen import CEILING, FLOOR, Screen, names, read_count
from guard.static import DIMS, PROVENANCE, StaticEmbedder

PEOPLE = synth_people(6, seed=3, facts_per_person=2)
FORGOTTEN, OTHER = "person-0001", "person-0002"
GENERAL = [p for prompts in general_prompts(split="test").values() for p in prompts]


def long_prompt(question: str, words: int) -> str:
    """`question` in the middle of `words` words of general requests (distinct sentences)."""
    rng = np.random.default_rng(0)
    filler = []
    while sum(len(t.split()) for t in filler) < words:
        filler.append(GENERAL[int(rng.integers(len(GENERAL)))])
    half = len(filler) // 2
    return " ".join(filler[:half] + [question] + filler[half:])


class Counting:
    """The MiniLM embedder, counting the texts it embeds."""

    def __init__(self, embed):
        self.embed, self.texts = embed, 0

    def __call__(self, texts):
        self.texts += len(texts)
        return self.embed(texts)


def _guard(minilm, pending: bool) -> tuple[Guard, Counting]:
    counting = Counting(minilm)
    guard = Guard.exemplars_only(counting, exemplar_threshold=0.8, static=minilm.static())
    references = [s.prompt for s in PEOPLE] + GENERAL
    guard.set_negatives(dict(zip(map(str, range(len(references))), minilm(references))))
    if pending:
        guard.add_exemplar("request-1", [t for s in PEOPLE if s.owner == FORGOTTEN
                                         for t in (s.prompt, s.response)])
    return guard, counting


def _question(owner: str) -> str:
    return next(s.prompt for s in PEOPLE if s.owner == owner)


def test_the_static_model_is_distilled_from_minilm_once_with_its_provenance(tmp_path, minilm,
                                                                          caplog):
    # Two processes that need it at once on a cold cache: one distils, the other waits for it.
    digest = _weights_digest(minilm.model_path)
    script = ("import logging, sys; from pathlib import Path; "
              "from guard.static import StaticEmbedder; logging.basicConfig(level=logging.INFO); "
              "StaticEmbedder(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4])")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(minilm.model_path), str(tmp_path),
                              "minilm", digest], stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    logs = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [log[-2000:] for log in logs]
    assert sum("distilling the guard's static embedder" in log for log in logs) == 1, logs
    caplog.set_level(logging.INFO, logger="lethe.guard")
    static = StaticEmbedder(minilm.model_path, tmp_path, "minilm", digest)
    provenance = json.loads((tmp_path / "minilm.static" / PROVENANCE).read_text())
    assert provenance["source_weights_sha256"] == digest
    assert provenance["recipe"]["pca_dims"] == DIMS and provenance["recipe"]["vocabulary"] > 30000
    assert {"model2vec", "torch", "transformers"} <= set(provenance["versions"])
    vectors = static(["Where does Vosmi Ulkathi live?", "In which town is Vosmi Ulkathi's home?",
                      "Write a haiku about autumn rain."])  # (3, DIMS)
    assert vectors.shape == (3, DIMS) and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # it carries meaning
    again = StaticEmbedder(minilm.model_path, tmp_path, "minilm", digest)
    assert again.provenance == provenance  # loaded, not distilled again
    assert "distilling" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm.static", "minilm.static.lock"]


def test_a_model_it_cannot_distil_is_refused_naming_it(tmp_path, tiny_model_dir):
    with pytest.raises(GuardError, match="tokenizer.json"):
        StaticEmbedder(tmp_path / "empty", tmp_path / "cache", "empty", "0")
    with pytest.raises(GuardError, match=r"no \[CLS\] and \[SEP\]"):  # a decoder's tokenizer
        StaticEmbedder(tiny_model_dir, tmp_path / "cache", "tiny", "0")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["empty.static.lock",
                                                                      "tiny.static.lock"]


def test_minilm_reads_as_many_pieces_whatever_the_prompt_is_about(minilm):
    """The time a check takes must not say whether the prompt is near a pending request: MiniLM
    embeds the same number of texts for a hidden forgotten question, another owner's question of
    the same length, and with no request pending at all."""
    near, far = long_prompt(_question(FORGOTTEN), 600), long_prompt(_question(OTHER), 600)
    assert len(views([near])) == len(views([far]))  # the same number of pieces
    counts = {}
    for pending in (True, False):
        guard, counting = _guard(minilm, pending)
        for name, prompt in (("near", near), ("far", far)):
            counting.texts = 0
            verdict = guard.check([prompt])
            counts[pending, name] = counting.texts
            assert verdict.flagged == (pending and name == "near"), (pending, name)
    assert len(set(counts.values())) == 1, counts
    pieces = len(views([near])) - 1
    assert counts[True, "near"] == 1 + read_count(pieces) < pieces // 4


def test_a_question_hidden_in_an_8000_token_prompt_is_flagged(minilm):
    guard, counting = _guard(minilm, pending=True)
    hidden = "where duz Vosmi Ulkathy live"  # misspelt, name included, no punctuation
    prompt = long_prompt(hidden, 6500)
    pieces = tokenizers.Tokenizer.from_file(str(minilm.model_path / "tokenizer.json"))
    pieces.no_truncation()
    assert len(pieces.encode(prompt).ids) > 8000  # MiniLM's word pieces
    counting.texts = 0
    verdict = guard.check([prompt])
    assert verdict.flagged and verdict.rule == "exemplar"
    assert counting.texts == 1 + read_count(len(views([prompt])) - 1)
    assert not guard.check([long_prompt(_question(OTHER), 6500)]).flagged


def test_a_trained_guard_keeps_the_static_anchors_of_its_fitting_prompts(tmp_path, minilm,
                                                                         people_items):
    forget, negatives = people_items
    options = dict(kind="logreg", target_fpr=0.05, holdout=0.3, seed=0, embedder="minilm")
    model, _ = train_guard(forget, negatives, minilm, static=minilm.static(), **options)
    screen = model.manifest["screen"]
    assert FLOOR <= screen["threshold"] <= CEILING
    assert screen["static"] == minilm.static().provenance
    fitting = len(forget) - round(0.3 * len(forget))  # items outside the held-out share
    # Their prompts and answers (every item has one), not their hostile forms
    assert model.vectors["static_pos"].shape == (2 * fitting, DIMS)
    save_model(model, tmp_path / "screened")
    guard = Guard.load(tmp_path / "screened", minilm, static=minilm.static())
    assert guard.screen is not None
    question = forget[0].prompt
    assert guard.check([long_prompt(question, 600)]).flagged == guard.check([question]).flagged
    # One trained before the first stage existed: MiniLM reads every piece, as it did.
    plain, _ = train_guard(forget, negatives, minilm, **options)
    save_model(plain, tmp_path / "plain")
    assert Guard.load(tmp_path / "plain", minilm, static=minilm.static()).screen is None


def test_a_view_names_a_pending_request_by_one_of_its_words(minilm):
    """`named` compares word with word, so that misspelt common words beside a name do not hide
    it: a view's uncommon word is a pending request's name or one letter off it; a name of
    common words, capitalised by the request, is one too; a view whose uncommon words are other
    names is not named, one without any is (nothing to tell it by); while a pending request
    has no name, every view is."""
    screen = Screen(minilm.static())

    def add(key, texts):
        screen.add(key, [[views([t])[0]] for t in texts], texts)

    add("request-1", ["Where does Vomsi Ulkathi live?", "Vomsi Ulkathi is a herbalist."])
    assert screen.named(["whhere does vossmi ulkatthi lve?",  # a letter added: "ulkatthi"
                         "what does vomsi ulakthi do?",  # two swapped
                         "where does vomsi live?"]).all()
    assert not screen.named(["where does rami thithimi live?", "whhere does vossmi lve?",
                             "what is the uklahti's sea?"]).any()  # two letters off each
    assert screen.named(["what is the capital of france?", ""]).all()  # no uncommon word
    add("request-2", ["Where does Edward Sullivan live?", "Edward Sullivan lives in Paris."])
    assert screen.named(["what does edward sulivan do?"])[0]  # one letter dropped
    assert not screen.named(["what does edward sulivvvan do?"])[0]
    add("request-3", ["where does he live?"])  # nothing capitalised, every word a common one
    assert screen.named(["where does rami thithimi live?"]).all()
    screen.remove("request-3")
    assert not screen.named(["where does rami thithimi live?"]).any()


def test_names_are_capitalised_inside_a_sentence_and_never_in_lower_case(minilm):
    common = minilm.static().words()
    found = names(["Where does Edward Sullivan live? Edward writes Books of the Sea.",
                   "He reads books on the sea. Raven Marais was born in Cape Town in June."],
                  common)
    assert {"sullivan", "edward", "marais", "cape", "town", "june"} <= set(found)
    assert not {"where", "books", "the", "sea", "raven", "he"} & set(found)  # "Raven" opens
