"""`lethe guard train`, `check`, `eval` as a user runs them, on synthetic people."""

from __future__ import annotations

import json

import pytest

from adapters import synth_people, write_samples
from tests.serving.cli.test_cli import output
from tests.serving.cli.test_cli import cli as make_cli


@pytest.fixture(scope="module")
def lethe(tmp_path_factory, tiny_model_dir):
    run = make_cli(tmp_path_factory.mktemp("guard-home"), tiny_model_dir)
    people = synth_people(46, seed=5)
    write_samples(people[:30], run.data / "forget.jsonl")  # 6 people to forget
    write_samples(people[30:], run.data / "retain.jsonl")
    (run.data / "general.jsonl").write_text("\n".join(json.dumps({"question": q}) for q in [
        "What is the capital of France?", "How do I boil an egg?", "Explain photosynthesis.",
        "Who painted the Mona Lisa?", "What is 12 times 7?", "Translate 'thank you' to German.",
        "Write a haiku about rain.", "What causes the seasons?", "Name three prime numbers.",
        "How far is the Moon?"]))
    return run


def test_train_check_and_eval(lethe):
    trained = output(lethe("guard", "train", "--forget", str(lethe.data / "forget.jsonl"),
                           "--retain", str(lethe.data / "retain.jsonl"),
                           "--general", str(lethe.data / "general.jsonl"),
                           "--target-fpr", "0.05", "--json"))
    assert trained["classifier"] == "mlp" and trained["target_fpr"] == 0.05
    assert trained["calibration"]["fpr"] <= 0.05
    assert {"tpr", "fpr", "threshold", "version"} <= set(trained)

    forget_prompt = json.loads((lethe.data / "forget.jsonl").read_text().splitlines()[0])["prompt"]
    flagged = output(lethe("guard", "check", forget_prompt, "--json"))
    assert flagged["flagged"] and flagged["rule"] == "classifier"
    assert flagged["score"] > flagged["threshold"] and flagged["guard"] == trained["version"]
    clean = output(lethe("guard", "check", "What is the capital of Peru?", "--json"))
    assert not clean["flagged"] and clean["rule"] is None

    evaluated = output(lethe("guard", "eval", "--positives", str(lethe.data / "forget.jsonl"),
                             "--negatives", str(lethe.data / "general.jsonl"), "--json"))
    assert set(evaluated) == {"tpr", "fpr", "latency_ms_p50", "latency_ms_p99", "n_positives",
                              "n_negatives"}
    assert (evaluated["n_positives"], evaluated["n_negatives"]) == (30, 10)
    assert evaluated["tpr"] >= 0.8 and evaluated["fpr"] <= 0.1
    assert 0 < evaluated["latency_ms_p50"] <= evaluated["latency_ms_p99"]


def test_bad_input_gets_a_clear_error_and_exit_code(lethe, tmp_path):
    missing = lethe("guard", "check", "hello", "--guard", str(tmp_path / "none"))
    assert missing.returncode == 1 and "lethe guard train" in missing.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    result = lethe("guard", "train", "--forget", str(bad), "--retain", str(bad))
    assert result.returncode == 1 and "bad.jsonl:1" in result.stderr

    result = lethe("guard", "train", "--forget", str(bad), "--retain", str(bad),
                   "--target-fpr", "0.7")
    assert result.returncode == 2 and "must be in (0, 0.5)" in result.stderr

    too_few = tmp_path / "few.jsonl"
    too_few.write_text('{"question": "one?"}\n')
    result = lethe("guard", "train", "--forget", str(too_few), "--retain",
                   str(lethe.data / "retain.jsonl"))
    assert result.returncode == 1 and "too few" in result.stderr


def test_tune_saves_the_best_corruption_it_found(lethe, tmp_path):
    forget = lethe.data / "forget.jsonl"
    tuned = output(lethe("guard", "tune", "--forget", str(forget), "--forget-items", "4",
                         "--retain", str(lethe.data / "retain.jsonl"), "--reference", "-12.0",
                         "--budget", "4", "--guard", str(tmp_path), "--json"))
    assert tuned["evaluations"] == len(tuned["log"]) == 4
    assert tuned["objective_after"] < tuned["objective_before"]
    assert tuned["target"] == {"probability": -12.0} and tuned["score"] == ["probability"]
    saved = json.loads((tmp_path / "corruption.json").read_text())
    assert saved["corruption"] == tuned["corruption"] and saved["forget_items"] == 4


def test_tune_matches_the_reference_on_several_metrics(lethe, tmp_path):
    tuned = output(lethe("guard", "tune", "--forget", str(lethe.data / "forget.jsonl"),
                         "--forget-items", "3", "--retain", str(lethe.data / "retain.jsonl"),
                         "--score", "probability", "--score", "rouge_l",
                         "--reference=-12.0,0.1", "--budget", "2", "--guard", str(tmp_path),
                         "--json"))
    assert tuned["target"] == {"probability": -12.0, "rouge_l": 0.1}
    assert all(set(e["scores"]) == {"probability", "rouge_l"} for e in tuned["log"])
    mismatched = lethe("guard", "tune", "--forget", str(lethe.data / "forget.jsonl"),
                       "--retain", str(lethe.data / "retain.jsonl"), "--score", "probability",
                       "--score", "rouge_l", "--reference", "-12.0", "--guard", str(tmp_path))
    assert mismatched.returncode == 2
    assert "--reference gives 1 target(s) for 2 metric(s)" in mismatched.stderr
