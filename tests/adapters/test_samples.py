import json

import pytest

from adapters import Sample, SampleFormatError, read_samples, write_samples


def test_jsonl_round_trip(tmp_path):
    samples = [Sample("a", "ann", "Q1?", "A1."), Sample("b", "bob", "Q2?", "A2.")]
    write_samples(samples, tmp_path / "s.jsonl")
    assert read_samples(tmp_path / "s.jsonl") == samples


def test_tallrec_instruction_records_become_samples(tmp_path):
    path = tmp_path / "movie_train.json"
    path.write_text(json.dumps([
        {"instruction": "Given the user's history, answer Yes or No.",
         "input": "User liked: Heat (1995). Will the user like Fargo (1996)?", "output": "Yes."},
        {"id": "u7", "owner": "user-7", "instruction": "Answer.", "input": "", "output": "No."},
    ]))
    first, second = read_samples(path)
    assert first == Sample("movie_train-000000", "movie_train-000000",
                           "Given the user's history, answer Yes or No.\n\nUser liked: Heat (1995)."
                           " Will the user like Fargo (1996)?", "Yes.")
    assert second == Sample("u7", "user-7", "Answer.", "No.")


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "owner": "o", "prompt": "p"}\n', r"s.jsonl:1: missing .* response"),
    ('{"id": "a", "owner": "o", "prompt": "p", "response": "r"}\nnot json\n', r"s.jsonl:2: not JSON"),
    ('[1]', r"s.jsonl\[0\]: expected a JSON object"),
    ('{"id": "a", "owner": "o", "prompt": "p", "response": "r"}\n' * 2, "duplicate sample id 'a'"),
])
def test_bad_records_are_named(tmp_path, content, message):
    (tmp_path / "s.jsonl").write_text(content)
    with pytest.raises(SampleFormatError, match=message):
        read_samples(tmp_path / "s.jsonl")
