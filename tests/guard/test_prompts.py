"""Prompt files (Lethe samples, TOFU) and prompt text."""

import json

import pytest

from guard import PromptFileError, read_items, strip_markup


def test_reads_tofu_jsonl_and_json_arrays_with_either_field_name(tmp_path):
    tofu = tmp_path / "forget.json"
    tofu.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who is A?", "answer": "A is B.", "paraphrased_answer": "B is A.",
         "perturbed_answer": ["C is A.", "D is A."]},
        {"question": "Who is E?", "answer": "E is F."}]))
    array = tmp_path / "prompts.json"
    array.write_text(json.dumps([{"prompt": "Hi?", "response": "Hello."}, {"prompt": "Bye?"}]))

    first, second = read_items(tofu)
    assert (first.prompt, first.answer, first.perturbed_answers) == ("Who is A?", "A is B.",
                                                                     ("C is A.", "D is A."))
    assert second.paraphrased_answer is None
    assert [(i.prompt, i.answer) for i in read_items(array)] == [("Hi?", "Hello."), ("Bye?", None)]


def test_a_record_without_a_prompt_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?"}\n{"text": "no prompt"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: .*question or prompt"):
        read_items(path)
    with pytest.raises(PromptFileError, match="cannot read"):
        read_items(tmp_path / "missing.jsonl")


def test_markup_is_stripped():
    assert strip_markup("<|im_start|>user\nWho is  A?<|im_end|>\n") == "Who is  A?"
