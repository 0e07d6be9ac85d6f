import json
import subprocess
import sys

import pytest

from adapters import SampleFormatError, read_samples, synth_people, write_samples


def test_same_seed_same_people_other_seed_other_people():
    assert synth_people(5, seed=1) == synth_people(5, seed=1)
    assert synth_people(5, seed=1) != synth_people(5, seed=2)


def test_each_person_is_an_owner_with_several_facts_and_unique_ids():
    samples = synth_people(10, seed=0)
    owners = {s.owner for s in samples}
    assert len(owners) == 10
    assert all(sum(s.owner == o for s in samples) == 5 for o in owners)
    assert len({s.id for s in samples}) == len(samples)
    # every fact of an owner names the same person, in the question and in the answer
    for owner in owners:
        facts = [s for s in samples if s.owner == owner]
        name = " ".join(facts[0].response.split(" ")[:2]).removesuffix("'s")
        assert all(name in s.prompt and s.response.startswith(name) for s in facts)


def test_jsonl_round_trip(tmp_path):
    samples = synth_people(3, seed=0)
    write_samples(samples, tmp_path / "s.jsonl")
    assert read_samples(tmp_path / "s.jsonl") == samples


@pytest.mark.parametrize("line,problem", [
    ("{not json", "not JSON"),
    ('{"id": "a", "owner": "o", "prompt": "p"}', "response"),
    ('{"id": "a", "owner": "", "prompt": "p", "response": "r"}', "owner"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "x", "owner": "o", "prompt": "p", "response": "r"}\n' + line + "\n")
    with pytest.raises(SampleFormatError, match=rf"bad.jsonl:2: .*{problem}"):
        read_samples(path)


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    line = '{"id": "x", "owner": "o", "prompt": "p", "response": "r"}\n'
    path.write_text(line * 2)
    with pytest.raises(SampleFormatError, match="duplicate sample id 'x'"):
        read_samples(path)


def test_cli_writes_the_samples(tmp_path):
    out = tmp_path / "people.jsonl"
    result = subprocess.run([sys.executable, "-m", "serving.cli", "data", "synth", "--people", "4",
                             "--out", str(out), "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"out": str(out), "people": 4, "samples": 20}
    assert read_samples(out) == synth_people(4, seed=0)


def test_cli_rejects_a_nonpositive_count(tmp_path):
    result = subprocess.run([sys.executable, "-m", "serving.cli", "data", "synth", "--people", "0",
                             "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 2 and "--people" in result.stderr
