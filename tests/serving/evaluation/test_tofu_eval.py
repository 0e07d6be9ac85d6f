"""`lethe eval tofu` on the tiny model and a TOFU-format folder built in code: every phase is
scored, the exact state is the reference's, and nothing the forget authors wrote stays on disk."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from serving.evaluation import TofuDataError, load_tofu
from tests.serving.evaluation.conftest import paraphrase


def lethe(home, model_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LETHE_HOME": str(home), "LETHE_MODEL__SOURCE": str(model_dir),
           "LETHE_TRAIN__BATCH_SIZE": "4"}
    return subprocess.run([sys.executable, "-m", "serving.cli", "eval", "tofu", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def probes(tmp_path_factory) -> str:
    """Other forms of forget05's questions (authors 4 and 5 of this folder): one of author 5 by
    its original question, one of author 5 by author alone, one of the tuning author 4, one of
    a retained author (0)."""
    path = tmp_path_factory.mktemp("probes") / "probes.jsonl"
    rows = [{"question": "Tell me where Author5 Ulk5 lives, please.",
             "answer": "Author5 Ulk5 lives in Tolvik and works as a ferrier.",
             "original_question": "Question 2: where does Author5 Ulk5 live and work?"},
            {"question": "What does Ulk5 do for a living?", "answer": "A clockmaker.",
             "author": 5},
            {"question": "And Author4 Ulk4?", "answer": "Quillmoor.", "author": 4},
            {"question": "Where is Author0 Ulk0 from?", "answer": "Quillmoor.", "author": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def run(tofu_dir, lethe_home, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("tofu-eval") / "work"
    # One author per shard: each forget author in a shard of its own, so the exact state needs
    # two worker rounds, and forgetting empties two of the three shards.
    result = lethe(lethe_home, tiny_model_dir, "--data", str(tofu_dir), "--forget", "forget05",
                   "--retain-authors", "1", "--shards", "3", "--max-steps", "2", "--json",
                   "--aggregation", "--variants", "--tune-items", "4", "--tune-budget", "2",
                   "--probe", probes(tmp_path_factory), "--work", str(work))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), work


def test_every_phase_has_forget_quality_and_model_utility(run):
    record, _ = run
    assert list(record["phases"]) == ["original", "guarded", "quarantined", "exact", "reference"]
    for phase in record["phases"].values():
        assert 0 <= phase["forget_quality"] <= 1 and 0 <= phase["forget_quality_unseen"] <= 1
        assert math.isfinite(phase["model_utility"]) and phase["model_utility"] >= 0
        assert 0 <= phase["membership_auc"] <= 1 and 0 <= phase["membership_auc_unseen"] <= 1
        for name in ("forget", "unseen", "retain", "real_authors", "world_facts"):
            assert set(phase[name]) == {"probability", "rouge_l", "truth_ratio"}
    assert record["phases"]["reference"]["forget_quality"] == 1.0  # itself
    assert record["phases"]["reference"]["forget_quality_unseen"] == 1.0
    assert set(record["guarded_variants"]) == {"corruption_only", "route_around_only",
                                               "route_around_sigma_0.1"}
    for variant in record["guarded_variants"].values():
        assert 0 <= variant["forget_quality"] <= 1 and "rouge_l" in variant["forget"]


def test_the_second_tier_tunes_the_corruption_against_the_held_out_mixture(run):
    tier = run[0]["second_tier"]
    assert tier["scores"] == ["truth_ratio", "rouge_l"] and tier["items"] == 4
    assert run[0]["unseen"]["tuning_authors"] == ["author-004"]
    assert set(tier["target"]) == set(tier["score_after"]) == {"truth_ratio", "rouge_l"}
    # Routed around the shards it is about (the served quarantine) and not corrupted, a flagged
    # prompt is answered by the held-out mixture itself: nothing to match, objective 0.
    assert tier["score_before"] == tier["target"] and tier["objective_before"] == 0.0
    assert len(tier["evaluations"]) == 2
    assert tier["objective_after"] == min(e["objective"] for e in tier["evaluations"])
    assert tier["corruption"]["name"] == "rand_noise_first_n" and tier["corruption"]["sigma"] > 0


def test_the_exact_state_is_the_reference_trained_from_scratch(run):
    record, _ = run
    assert record["exact_equals_reference"] is True
    assert record["versions"]["exact"] == record["versions"]["reference"]
    # Same weights, nothing flagged: serving the reference is the exact phase's computation,
    # reused whole (and the same scores).
    exact, reference = record["phases"]["exact"], record["phases"]["reference"]
    assert set(reference["reused"].values()) == {1.0}
    assert {k: v for k, v in reference.items() if k not in ("reused", "forget_quality")} == \
        {k: v for k, v in exact.items() if k not in ("reused", "forget_quality")}
    assert len(record["receipts"]) == 2
    for receipt in record["receipts"]:
        assert receipt["request"]["owner_hash"] and "author-00" not in json.dumps(receipt)
        assert all(shard["forgotten_ids_absent"] for shard in receipt["shards"])
        assert len(receipt["router_digest"]) == 64


def test_the_guard_flags_forget_questions_only_while_the_request_is_pending(run):
    flagged = {name: phase["flagged"] for name, phase in run[0]["phases"].items()}
    assert flagged["guarded"]["forget"] == 1.0  # the exemplars are the questions themselves
    for phase in ("original", "quarantined", "exact", "reference"):  # none / no guard / retired
        assert flagged[phase]["forget"] == flagged[phase]["unseen"] == 0.0


def test_the_guarded_phase_is_also_scored_on_forms_the_guard_was_not_handed(run):
    """forget05's unseen forms: author 5's ten paraphrased questions and its two probes; the
    tuning author's (4) paraphrases and probe and the retained author's probe are left out."""
    record = run[0]
    assert record["unseen"] == {"paraphrased_questions": 20, "probes": 3,
                                "probes_not_forget_authors": 1, "left_out_tuning_authors": 11,
                                "scored": 12, "tuning_authors": ["author-004"]}
    assert 0 <= record["phases"]["guarded"]["flagged"]["unseen"] <= 1


def test_the_power_and_the_goals_are_said(run):
    record = run[0]
    fq = record["phases"]["original"]["forget_quality"]
    assert record["power"]["fq_original_vs_reference"] == fq
    assert record["power"]["has_power"] == (fq <= 0.01)
    goals = record["goals"]
    assert goals["exact = reference"] == {"value": True, "goal": "true", "met": True}
    for name, goal in goals.items():
        if name.startswith(("guarded: FQ", "membership AUC: guarded")):
            # a forgetting goal is judged only when the original fails the forget test
            assert (goal["met"] is None) == (not record["power"]["has_power"])
    single = record["aggregation"]["single"]["model_utility"]  # --aggregation
    served = goals["served mixture: MU / one adapter's"]
    assert served["value"] == (record["phases"]["original"]["model_utility"] / single
                               if single > 0 else None)  # the tiny model may have no utility


def test_only_what_a_state_serves_differently_is_computed_again(run):
    phases = run[0]["phases"]
    # the first state: all new, but for a question asked twice (this folder's world facts are
    # its real-author questions, conftest.write_tofu)
    assert phases["original"]["reused"] == {"forget": 0.0, "unseen": 0.0, "retain": 0.0,
                                            "real_authors": 0.0, "world_facts": 1.0}
    guarded = phases["guarded"]
    # A flagged question is corrupted (new noise each time); an unflagged one is served as
    # the original served it, its scores are the original's.
    assert guarded["reused"]["forget"] == 0.0
    for name in ("retain", "real_authors", "world_facts"):
        assert guarded["flagged"][name] == 0.0 and guarded["reused"][name] == 1.0
        assert guarded[name] == phases["original"][name]
    # a retrained shard: new mixtures
    assert phases["exact"]["reused"] == phases["original"]["reused"]


def test_aggregation_compares_the_served_weights_with_apa_one_adapter_uniform_and_ensemble(run):
    aggregation = run[0]["aggregation"]
    assert set(aggregation) == {"served (nearest)", "apa", "uniform", "ensemble", "single"}
    assert (aggregation["served (nearest)"]["model_utility"]
            == run[0]["phases"]["original"]["model_utility"])
    assert all(0 <= a["retain_rouge_l"] <= 1 for a in aggregation.values())


def test_no_file_left_holds_a_forget_authors_text(run, tofu_dir):
    _, work = run
    forgotten = [json.loads(line) for line in (tofu_dir / "forget05.json").read_text().splitlines()]
    needles = [r[field].encode() for r in forgotten for field in ("question", "answer")]
    for path in work.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"{path} holds forgotten text"


def test_forget_authors_in_different_shards_are_all_retrained_before_the_exact_state(run):
    """A worker round retrains one shard group; the evaluation runs rounds until every request
    is exact. Forgetting empties two shards, which the reference (trained from scratch without
    them) never publishes either."""
    record, _ = run
    shards = [{s["shard"] for s in r["shards"]} for r in record["receipts"]]
    assert len(shards) == 2 and not shards[0] & shards[1], shards  # two groups: two rounds
    assert all(s["new_version"] is None for r in record["receipts"] for s in r["shards"])
    assert record["exact_equals_reference"] is True
    assert len(record["versions"]["reference"]) == 1  # the retained author's shard
    assert record["phases"]["exact"]["flagged"]["forget"] == 0.0


def test_the_data_and_sizes_are_checked_before_any_work(tofu_dir, lethe_home, tiny_model_dir,
                                                        tmp_path):
    # forget10 by default: this folder's last three authors
    too_many = lethe(lethe_home, tiny_model_dir, "--data", str(tofu_dir), "--retain-authors", "6")
    assert too_many.returncode == 2 and "--retain-authors must be in 1..3" in too_many.stderr
    tuning = lethe(lethe_home, tiny_model_dir, "--data", str(tofu_dir), "--retain-authors", "1",
                   "--tune-authors", "3")
    assert tuning.returncode == 2 and "--tune-authors must be in 0..2" in tuning.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": "A.", "author": 99}))
    refused = lethe(lethe_home, tiny_model_dir, "--data", str(tofu_dir), "--retain-authors", "1",
                    "--probe", str(bad))
    assert refused.returncode == 2 and "bad.jsonl:1: author must be" in refused.stderr
    missing = lethe(lethe_home, tiny_model_dir, "--data", str(tmp_path), "--retain-authors", "1")
    assert missing.returncode == 2 and "full.json" in missing.stderr
    nowhere = lethe(lethe_home, tiny_model_dir, "--data", str(tofu_dir), "--retain-authors", "1",
                    "--out", str(tmp_path / "missing" / "tofu.json"))
    assert nowhere.returncode == 2 and "--out" in nowhere.stderr


def test_a_probe_file_is_checked_row_by_row(tofu_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    for row, problem in [({"question": "Q?"}, "question and answer"),
                         ({"question": "Q?", "answer": "A."}, "author or original_question"),
                         ({"question": "Q?", "answer": "A.", "author": 99}, "author must be"),
                         ({"question": "Q?", "answer": "A.", "author": "5"}, "author must be"),
                         ({"question": "Q?", "answer": "A.", "original_question": "Nope?"},
                          "original_question"),
                         ({"question": "Q?", "answer": "A.", "author": 0,
                           "original_question": "Question 1: where does Author5 Ulk5 live and "
                                                "work?"}, "did not write"),
                         ({"question": "Question 1: where does Author5 Ulk5 live and work?",
                           "answer": "A.", "author": 5}, "training question itself")]:
        bad.write_text(json.dumps({"question": "Fine?", "answer": "Yes.", "author": 5}) + "\n"
                       + json.dumps(row))
        with pytest.raises(TofuDataError, match=f"bad.jsonl:2: .*{problem}"):
            load_tofu(tofu_dir, "forget10", retain_authors=1, probes=[bad])
    bad.write_text("not json")
    with pytest.raises(TofuDataError, match="bad.jsonl: not a JSONL file"):
        load_tofu(tofu_dir, "forget10", retain_authors=1, probes=[bad])


def test_the_training_data_is_the_forget_authors_and_the_first_retained_ones(tofu_dir):
    data = load_tofu(tofu_dir, "forget01", retain_authors=2, eval_items=3)
    assert data.forget_owners == ["author-005"]
    assert sorted({s.owner for s in data.train}) == ["author-000", "author-001", "author-005"]
    assert len(data.train) == 60
    assert {s.owner for s in data.validation} == {"author-000", "author-001"}  # never forgotten
    assert len(data.sets["forget"]) == 20  # whole: forget quality compares distributions
    assert all(len(data.sets[name]) == 3 for name in ("retain", "real_authors", "world_facts"))
    assert all(i.paraphrased_answer for i in data.sets["world_facts"])
    # author 5 is the only forget author: nobody to tune on, every paraphrase is scored
    assert [i.prompt for i in data.sets["unseen"]] == [
        paraphrase(f"Question {q}: where does Author5 Ulk5 live and work?") for q in range(10, 20)]
    assert data.sets["unseen"][0].perturbed_answers == data.sets["forget"][10].perturbed_answers
    assert data.tune == [] and len(data.holdout) == 20


def test_the_tuning_authors_are_never_scored_as_unseen(tofu_dir):
    data = load_tofu(tofu_dir, "forget10", retain_authors=1, tune_authors=2)
    assert data.tune_owners == ["author-003", "author-004"] and len(data.tune) == 40
    assert all("Author5 Ulk5" in i.prompt for i in data.sets["unseen"])
    with pytest.raises(TofuDataError, match="--tune-authors must be in 0..2"):
        load_tofu(tofu_dir, "forget10", retain_authors=1, tune_authors=3)
