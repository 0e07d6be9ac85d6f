"""TOFU (Maini et al. 2024) as the evaluation reads it: fictitious authors to train on, and the
question sets every phase is scored on.

    full.json                  200 authors x 20 questions, author by author
    forgetNN.json              the last 2 / 10 / 20 authors' questions (1 / 5 / 10 %)
    forgetNN_perturbed.json    the same questions with a paraphrased and 5 perturbed answers
                               (and, on some rows, a `paraphrased_question`)
    holdoutNN.json             questions of other fictitious authors, never trained on
    retain_perturbed.json      400 questions of the first authors, with the same answers
    real_authors_perturbed.json, world_facts_perturbed.json   general knowledge, with options

Training data: the forget authors plus the first N other authors, one owner per author (APA
groups an owner into one shard). Validation (APA's loss table): two training questions of each
retained author, never of a forget author (validation text is kept: it must hold nothing a
forget request would have to erase).

What the guarded state is scored on must not be what the forget request handed the guard (its
exemplars are the forget authors' training questions): `unseen` holds other forms of the forget
questions, the `paraphrased_question` of the perturbed file where a row has one and the rows of
`--probe` files. The corruption is tuned on the first `tune_authors` forget authors' questions
(`tune`), whose unseen forms are left out of `unseen`, so nothing is scored on what it was tuned
on. `holdout`: as many never-trained questions as the forget set has, the non-members of the
membership-inference audit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from adapters import Sample
from guard import Item, PromptFileError, read_items

from ..errors import UsageError

SPLITS = ("forget01", "forget05", "forget10")
QUESTIONS_PER_AUTHOR = 20  # TOFU's full.json: each author's 20 questions in a row
VALIDATION_QUESTIONS = (0, 10)  # of each retained author's 20
PROBE_FIELDS = "question, answer, and author (0-199, full.json's order) or original_question"


class TofuDataError(UsageError):
    """The TOFU folder lacks a file or a split, or the sizes asked for do not fit it."""


@dataclass(frozen=True)
class TofuData:
    train: list[Sample]  # forget authors, then retained authors
    validation: list[Sample]
    forget_owners: list[str]
    sets: dict[str, list[Item]]  # forget, unseen, retain, real_authors, world_facts
    tune: list[Item]  # the tuning authors' forget questions (the second tier's)
    tune_owners: list[str]
    holdout: list[Item]  # never trained on: the membership audit's non-members
    unseen_counts: dict[str, int]  # where `unseen` came from, and what was left out


def owner(author: int) -> str:
    return f"author-{author:03d}"


def _items(path: Path) -> list[Item]:
    try:
        return read_items(path)
    except PromptFileError as e:
        raise TofuDataError(f"{e} (--data is TOFU's folder: full.json, {SPLITS[0]}.json, "
                            f"...)") from e


def _records(path: Path) -> list[dict]:
    """The objects of a JSONL or JSON-array file (read_items has checked its form)."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _probe(record: object, where: str, author_of: dict[str, int], authors: int) -> tuple[
        int, str | None, Item]:
    """(author, original question or None, the probe as an Item) of one --probe record."""
    if not isinstance(record, dict):
        raise TofuDataError(f"{where}: expected an object with {PROBE_FIELDS}")
    question, answer = record.get("question"), record.get("answer")
    author, original = record.get("author"), record.get("original_question")
    if not (isinstance(question, str) and question and isinstance(answer, str) and answer):
        raise TofuDataError(f"{where}: needs non-empty strings question and answer "
                            f"({PROBE_FIELDS})")
    if author is None and original is None:
        raise TofuDataError(f"{where}: needs author or original_question ({PROBE_FIELDS})")
    if author is not None and (isinstance(author, bool) or not isinstance(author, int)
                               or not 0 <= author < authors):
        raise TofuDataError(f"{where}: author must be an integer in 0..{authors - 1}, "
                            f"got {author!r}")
    if question in author_of:
        raise TofuDataError(f"{where}: question is a TOFU training question itself (a probe is "
                            f"another form of one: original_question)")
    if original is not None:
        if not isinstance(original, str) or original not in author_of:
            raise TofuDataError(f"{where}: original_question is not a question of full.json")
        if author is not None and author != author_of[original]:
            raise TofuDataError(f"{where}: author {author} did not write original_question "
                                f"(author {author_of[original]} did)")
        author = author_of[original]
    return author, original, Item(prompt=question, answer=answer)


def load_tofu(root: Path, split: str, retain_authors: int, eval_items: int | None = None,
              probes: list[Path] = (), tune_authors: int = 0) -> TofuData:
    """The training samples and question sets for `split` with `retain_authors` other authors;
    the utility sets (retain, real authors, world facts) cut to their first `eval_items`
    questions (None: all). The forget set is always whole: forget quality compares its
    distribution of truth ratios. `probes`: JSONL files of other forms of forget questions
    (module doc); `tune_authors`: how many forget authors the corruption is tuned on."""
    root = Path(root)
    if split not in SPLITS:
        raise TofuDataError(f"unknown split {split!r}; TOFU's: {', '.join(SPLITS)}")
    full = _items(root / "full.json")
    author_of = {item.prompt: i // QUESTIONS_PER_AUTHOR for i, item in enumerate(full)}
    forget_authors = sorted({author_of.get(item.prompt, -1)
                             for item in _items(root / f"{split}.json")})
    if forget_authors[0] < 0:
        raise TofuDataError(f"{root / f'{split}.json'} has questions that full.json lacks")
    if not 0 <= tune_authors < len(forget_authors):
        raise TofuDataError(f"--tune-authors must be in 0..{len(forget_authors) - 1} for {split} "
                            f"({len(forget_authors)} forget author(s); at least one is scored)")
    others = [a for a in range(len(full) // QUESTIONS_PER_AUTHOR) if a not in forget_authors]
    if not 1 <= retain_authors <= len(others):
        raise TofuDataError(f"--retain-authors must be in 1..{len(others)} for {split}, "
                            f"got {retain_authors}")
    retained = others[:retain_authors]

    def samples(authors: list[int], questions=range(QUESTIONS_PER_AUTHOR)) -> list[Sample]:
        return [Sample(f"tofu-{i:04d}", owner(a), full[i].prompt, full[i].answer)
                for a in authors for q in questions
                for i in [a * QUESTIONS_PER_AUTHOR + q]]

    retain = [i for i in _items(root / "retain_perturbed.json")
              if author_of.get(i.prompt) in set(retained)]
    if not retain:
        raise TofuDataError(f"retain_perturbed.json has no question of the {retain_authors} "
                            f"retained author(s)")
    def options(name: str) -> list[Item]:
        # TOFU's truth ratio on a multiple-choice set: the options against the answer itself
        return [replace(i, paraphrased_answer=i.paraphrased_answer or i.answer)
                for i in _items(root / f"{name}_perturbed.json")]

    forget = _items(root / f"{split}_perturbed.json")
    tuning = set(forget_authors[:tune_authors])
    # other forms of the forget questions: (author, Item), the answers' options as the original
    # question's, so that every form has a truth ratio where its original has one
    as_forget = {i.prompt: i for i in forget}
    forms = []
    for r in _records(root / f"{split}_perturbed.json"):
        if isinstance(r.get("paraphrased_question"), str) and r["paraphrased_question"]:
            if r["question"] not in author_of:
                raise TofuDataError(f"{split}_perturbed.json: {r['question']!r} is not in "
                                    f"full.json")
            forms.append((author_of[r["question"]], replace(as_forget[r["question"]],
                                                            prompt=r["paraphrased_question"])))
    counts = {"paraphrased_questions": len(forms), "probes": 0, "probes_not_forget_authors": 0}
    for path in probes:
        try:
            records = _records(Path(path))
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
            raise TofuDataError(f"--probe {path}: not a JSONL file of objects with "
                                f"{PROBE_FIELDS} ({e})") from e
        for n, record in enumerate(records, 1):
            author, original, item = _probe(record, f"--probe {path}:{n}", author_of,
                                            len(full) // QUESTIONS_PER_AUTHOR)
            if author not in forget_authors:
                counts["probes_not_forget_authors"] += 1
                continue
            counts["probes"] += 1
            known = as_forget.get(original)
            forms.append((author, item if known is None else replace(
                known, prompt=item.prompt, answer=item.answer)))
    counts["left_out_tuning_authors"] = sum(a in tuning for a, _ in forms)
    holdout = _items(root / f"holdout{split.removeprefix('forget')}.json")
    sets = {"forget": forget, "unseen": [i for a, i in forms if a not in tuning],
            "retain": retain, "real_authors": options("real_authors"),
            "world_facts": options("world_facts")}
    return TofuData(train=samples(forget_authors + retained),
                    validation=samples(retained, VALIDATION_QUESTIONS),
                    forget_owners=[owner(a) for a in forget_authors],
                    sets={name: items if name in ("forget", "unseen") else items[:eval_items]
                          for name, items in sets.items()},
                    tune=[i for i in forget if author_of[i.prompt] in tuning],
                    tune_owners=[owner(a) for a in sorted(tuning)],
                    holdout=holdout[:len(forget)], unseen_counts=counts)
