"""The guard as the server uses it: train, check, instant exemplars, the window head."""

import pickle
import time

import numpy as np
import pytest

from adapters import synth_people
from guard import Guard, GuardError, general_vectors, save_model, train_guard


@pytest.fixture
def guard(tmp_path, minilm, people_items):
    forget, negatives = people_items
    model, _ = train_guard(forget, negatives, minilm, kind="mlp", target_fpr=0.05, holdout=0.3,
                           seed=0, embedder="all-MiniLM-L6-v2")
    save_model(model, tmp_path / "guard")
    return Guard.load(tmp_path / "guard", minilm)


def test_training_reports_held_out_rates_and_records_provenance(minilm, people_items):
    forget, negatives = people_items
    model, report = train_guard(forget, negatives, minilm, kind="mlp", target_fpr=0.05,
                                holdout=0.3, seed=0, embedder="all-MiniLM-L6-v2")
    assert report["calibration"]["fpr"] <= 0.05
    assert report["test"]["n_positives"] + report["calibration"]["n_positives"] == 9
    assert 0 <= report["test"]["tpr"] <= 1
    data = model.manifest["data"]
    assert len(data["forget_sha256"]) == 64 and data["forget_items"] == 30
    assert "Where" not in str(model.manifest)  # hashes and counts, never the prompts


def test_forget_prompts_are_flagged_and_unrelated_ones_are_not(guard, people_items):
    forget, _ = people_items
    hits = [guard.check([item.prompt]).flagged for item in forget]
    assert np.mean(hits) >= 0.8
    for prompt in ("What is the capital of France?", "Write a haiku about autumn rain."):
        verdict = guard.check([prompt])
        assert not verdict.flagged and verdict.rule is None


@pytest.mark.latency
def test_an_added_exemplar_flags_its_duplicate_and_a_near_duplicate_within_a_second(guard):
    model = guard.model
    prompt = "Which violin did Torvel Quimarra sell to the museum in Brinnick?"
    reworded = "Which violin did Torvel Quimarra sell to the Brinnick museum?"
    assert not guard.check([prompt]).flagged

    start = time.perf_counter()
    guard.add_exemplar("request-1", [prompt, "Torvel Quimarra sold the 1781 Galvor violin."])
    duplicate, near = guard.check([prompt]), guard.check([reworded])
    elapsed = time.perf_counter() - start

    assert elapsed < 1.0
    assert guard.model is model  # the trained classifier is never refitted
    assert duplicate.flagged and duplicate.rule == "exemplar" and duplicate.exemplar == "request-1"
    assert near.flagged and near.rule == "exemplar"
    assert guard.exemplars.get("request-1").shape[1] == guard.dim  # vectors, never the text

    assert guard.retire_exemplar("request-1")
    assert not guard.check([prompt]).flagged


WINDOW = synth_people(12, seed=3, facts_per_person=3)  # person-0001 is forgotten below


def _window_guard(minilm) -> Guard:
    """A guard of exemplars alone, calibrated against the other people's questions and the
    general requests, as the forget service sets it up."""
    guard = Guard.exemplars_only(minilm, exemplar_threshold=0.8, static=minilm.static())
    guard.set_negatives({**dict(zip([s.id for s in WINDOW], minilm([s.prompt for s in WINDOW]))),
                         **general_vectors(minilm)})
    return guard


def _request(owner: str) -> tuple[list[str], list[str]]:
    mine = [s for s in WINDOW if s.owner == owner]
    return [t for s in mine for t in (s.prompt, s.response)], [s.id for s in mine]


def test_the_window_head_covers_forms_the_exemplars_miss(minilm):
    guard = _window_guard(minilm)
    misspelt = "Waht deos Ullka Thidarrrin do for a livving?"  # "What does Ulka Thidarrin ..."
    assert not guard.check([misspelt]).flagged
    guard.add_exemplar("request-1", *_request("person-0001"))
    assert guard.settle(timeout=120)  # seconds (bench/bench_guard.py measures it), not minutes
    verdict = guard.check([misspelt])
    assert verdict.flagged and verdict.rule == "head"  # the exemplars alone let it through
    assert verdict.similarity < guard.exemplars.threshold("request-1")
    # nearness alone names no request (a flagged prompt then skips every held shard)
    assert verdict.requests is None and verdict.unrelated == frozenset()
    for other in (s.prompt for s in WINDOW if s.owner != "person-0001"):
        assert not guard.check([other]).flagged, other  # "Where does Rami Thithimi live?" too


def test_the_window_head_leaves_people_it_never_saw_asked_the_same_way(minilm):
    """The head is fitted on a pending person's questions against other people's, so it scores
    anyone asked in the same templates high; it flags a view only where one of the view's
    uncommon words is one of a pending request's names or a letter off it (a name, misspelt or
    not; screen.py `named`). Without that, it flagged 7 of the 360 questions below (2, 3 and 2
    per world)."""
    guard = _window_guard(minilm)
    guard.add_exemplar("request-1", *_request("person-0001"))
    assert guard.settle(timeout=120)
    for seed in (7, 8, 9):  # worlds of 40 people the guard never saw, not among its negatives
        for question in (s.prompt for s in synth_people(40, seed=seed, facts_per_person=3)):
            assert guard.check([question]).rule != "head", question
    # the pending person, both words of the name misspelt, among misspelt common words
    assert guard.check(["Waht deos Ullka Thidarrrin do for a livving?"]).rule == "head"


def test_a_verdict_names_the_pending_requests_a_prompt_is_about(minilm):
    """What a flagged prompt is about decides which held shards it avoids
    (`forget.quarantine: matched`): each request the prompt asks about, and only those, though
    every owner's questions share one shape."""
    guard = _window_guard(minilm)
    guard.add_exemplar("request-1", *_request("person-0001"))
    guard.add_exemplar("request-2", *_request("person-0002"))
    assert guard.settle(timeout=120)  # the head too: it must not name every request
    asks = {owner: [s.prompt for s in WINDOW if s.owner == owner]
            for owner in ("person-0001", "person-0002")}
    for owner, request, other in (("person-0001", "request-1", "request-2"),
                                  ("person-0002", "request-2", "request-1")):
        for question in asks[owner]:
            verdict = guard.check([question])
            assert verdict.flagged and verdict.requests == {request}, question
            assert verdict.unrelated == {other}
    # one message about both, two messages, one of them behind filler
    first, second = asks["person-0001"][0], asks["person-0002"][0]
    for texts in ([f"{first} And {second}"], [first, second], [f"{'-' * 260} {first}", second]):
        assert guard.check(texts).requests == {"request-1", "request-2"}, texts
    unrelated = guard.check(["What is the capital of France?"])
    assert not unrelated.flagged and unrelated.requests == frozenset()


def test_a_flag_the_pending_requests_do_not_explain_names_none(guard, people_items):
    """A view that the trained classifier flags (about data no pending request holds) makes the
    whole prompt unattributed, even beside a view about a pending request."""
    forget, _ = people_items
    guard.add_exemplar("request-1", ["Where does Torvel Quimarra live?"])
    pending = guard.check(["Where does Torvel Quimarra live?"])
    assert pending.rule == "exemplar" and pending.requests == {"request-1"}
    trained = next(item.prompt for item in forget if guard.check([item.prompt]).rule == "classifier")
    both = guard.check(["Where does Torvel Quimarra live?", trained])
    assert both.flagged and both.requests is None and both.unrelated == frozenset()


def test_a_completed_request_leaves_nothing_derived_from_it_in_the_guard(minilm):
    guard = _window_guard(minilm)
    guard.add_exemplar("request-1", *_request("person-0001"))
    guard.add_exemplar("request-2", *_request("person-0002"))
    assert guard.settle(timeout=120)
    guard.retire_exemplar("request-1")
    assert guard.head is None or "request-1" not in guard._head.keys  # at once, not after a fit
    assert guard.settle(timeout=120)
    # The head is the one that fitting on what is left gives, byte for byte.
    alone = _window_guard(minilm)
    for s in (s for s in WINDOW if s.owner == "person-0001"):  # forgotten: no negatives now
        alone._negatives.pop(s.id)
    alone.add_exemplar("request-2", *_request("person-0002"))
    assert alone.settle(timeout=120)
    assert pickle.dumps(guard.head.estimator) == pickle.dumps(alone.head.estimator)
    assert guard.head.threshold == alone.head.threshold
    assert guard.exemplars.keys() == guard.screen.keys() == ["request-2"]
    # No vector the guard holds is (nearly) a forgotten text's embedding.
    forgotten = minilm(_request("person-0001")[0])  # (n, D)
    held = np.concatenate([guard.exemplars.get("request-2"), guard._negative_rows,
                           *guard.head.vectors.values()])
    assert (held @ forgotten.T).max() < 0.99
    guard.retire_exemplar("request-2")
    assert guard.settle(timeout=120) and guard.head is None and len(guard.exemplars) == 0
    assert guard.screen.keys() == []  # the first stage's anchors of both went too


def test_chat_markup_is_stripped_before_classifying(guard, people_items):
    forget, _ = people_items
    plain = guard.check([forget[0].prompt])
    wrapped = guard.check([f"<|im_start|>user\n{forget[0].prompt}<|im_end|>\n"])
    assert wrapped.score == pytest.approx(plain.score)


def test_a_guard_refuses_an_embedder_of_another_dimension(tmp_path, guard):
    with pytest.raises(GuardError, match="384-dim"):
        Guard.load(tmp_path / "guard", lambda texts: np.zeros((len(texts), 64), np.float32))


def test_a_guard_without_a_classifier_flags_by_exemplars_alone(minilm):
    guard = Guard.exemplars_only(minilm, exemplar_threshold=0.8)
    prompt = "Where does Torvel Quimarra live?"
    assert not guard.check([prompt]).flagged
    guard.add_exemplar("request-1", [prompt, "Torvel Quimarra lives in Brinnick."])
    assert guard.check(["Tell me where Torvel Quimarra lives."]).rule == "exemplar"
    assert not guard.check(["Where does Ada Lovelace live?"]).flagged


def test_a_request_whose_text_is_purged_still_takes_its_samples_out_of_the_negatives(minilm):
    """A replica that first hears of a request after its text was purged cannot guard it, but
    its samples' embeddings must still go from the guard's negatives when it is retired."""
    guard = _window_guard(minilm)
    _, ids = _request("person-0001")
    with pytest.raises(GuardError, match="no text"):
        guard.add_exemplar("request-1", [], covers=ids)
    guard.retire_exemplar("request-1")
    assert not set(ids) & set(guard._negatives)
