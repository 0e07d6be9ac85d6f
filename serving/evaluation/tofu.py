"""TOFU (Maini et al. 2024) as the evaluation reads it: fictitious authors to train on, and the
question sets every phase is scored on.

    full.json                  200 authors x 20 questions, author by author
    forgetNN.json              the last 2 / 10 / 20 authors' questions (1 / 5 / 10 %)
    forgetNN_perturbed.json    the same questions with a paraphrased and 5 perturbed answers
    retain_perturbed.json      400 questions of the first authors, with the same answers
    real_authors_perturbed.json, world_facts_perturbed.json   general knowledge, with options

Training data: the forget authors plus the first N other authors, one owner per author (APA
groups an owner into one shard). Validation (APA's loss table): two training questions of each
retained author, never of a forget author (validation text is kept: it must hold nothing a
forget request would have to erase).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from adapters import Sample
from guard import Item, PromptFileError, read_items

from ..errors import UsageError

SPLITS = ("forget01", "forget05", "forget10")
QUESTIONS_PER_AUTHOR = 20  # TOFU's full.json: each author's 20 questions in a row
VALIDATION_QUESTIONS = (0, 10)  # of each retained author's 20


class TofuDataError(UsageError):
    """The TOFU folder lacks a file or a split, or the sizes asked for do not fit it."""


@dataclass(frozen=True)
class TofuData:
    train: list[Sample]  # forget authors, then retained authors
    validation: list[Sample]
    forget_owners: list[str]
    sets: dict[str, list[Item]]  # forget, retain, real_authors, world_facts


def owner(author: int) -> str:
    return f"author-{author:03d}"


def _items(path: Path) -> list[Item]:
    try:
        return read_items(path)
    except PromptFileError as e:
        raise TofuDataError(f"{e} (--data is TOFU's folder: full.json, {SPLITS[0]}.json, "
                            f"...)") from e


def load_tofu(root: Path, split: str, retain_authors: int, eval_items: int | None = None
              ) -> TofuData:
    """The training samples and question sets for `split` with `retain_authors` other authors;
    the utility sets (retain, real authors, world facts) cut to their first `eval_items`
    questions (None: all). The forget set is always whole: forget quality compares its
    distribution of truth ratios."""
    root = Path(root)
    if split not in SPLITS:
        raise TofuDataError(f"unknown split {split!r}; TOFU's: {', '.join(SPLITS)}")
    full = _items(root / "full.json")
    author_of = {item.prompt: i // QUESTIONS_PER_AUTHOR for i, item in enumerate(full)}
    forget_authors = sorted({author_of.get(item.prompt, -1)
                             for item in _items(root / f"{split}.json")})
    if forget_authors[0] < 0:
        raise TofuDataError(f"{root / f'{split}.json'} has questions that full.json lacks")
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

    sets = {"forget": _items(root / f"{split}_perturbed.json"), "retain": retain,
            "real_authors": options("real_authors"), "world_facts": options("world_facts")}
    return TofuData(train=samples(forget_authors + retained),
                    validation=samples(retained, VALIDATION_QUESTIONS),
                    forget_owners=[owner(a) for a in forget_authors],
                    sets={name: items if name == "forget" else items[:eval_items]
                          for name, items in sets.items()})
