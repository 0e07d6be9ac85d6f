import json

import pytest

TOWNS = ["Quillmoor", "Tolvik", "Brinnick", "Osterby", "Valdane", "Harrowgate"]
TRADES = ["beekeeper", "clockmaker", "cartographer", "glassblower", "ferrier", "bookbinder"]


def paraphrase(question: str) -> str:
    """This folder's `paraphrased_question` of a question."""
    return question.replace("where does", "in which town and trade do").replace("?", " live?")


def write_tofu(root, authors: int = 6) -> None:
    """A folder in TOFU's format, 20 questions per fictitious author; forget01 is the last,
    forget05 the last two, forget10 the last three; the perturbed rows of each author's
    questions 10-19 have a `paraphrased_question` (TOFU's forget10 has it on its last 200 rows);
    holdout: questions of authors nobody trains on."""
    full, perturbed, holdout = [], [], []
    for a in range(authors + 2):
        name = f"Author{a} Ulk{a}"
        for q in range(20):
            fact = TOWNS[(a + q) % len(TOWNS)], TRADES[(a * 3 + q) % len(TRADES)]
            question = f"Question {q}: where does {name} live and work?"
            answer = f"{name} lives in {fact[0]} and works as a {fact[1]}."
            if a >= authors:
                holdout.append({"question": question, "answer": answer})
                continue
            full.append({"question": question, "answer": answer})
            perturbed.append({"question": question, "answer": answer,
                              "paraphrased_answer": f"In {fact[0]}, as a {fact[1]}.",
                              "perturbed_answer": [f"In {t}, as a {fact[1]}." for t in TOWNS[:3]
                                                   if t != fact[0]],
                              **({"paraphrased_question": paraphrase(question)} if q >= 10
                                 else {})})
    options = [{"question": f"Which town is number {i}?", "answer": TOWNS[i],
                "perturbed_answer": [t for t in TOWNS if t != TOWNS[i]][:3]} for i in range(4)]
    files = {"full": full, "forget01": full[-20:], "forget01_perturbed": perturbed[-20:],
             "forget05": full[-40:], "forget05_perturbed": perturbed[-40:],  # two authors
             "forget10": full[-60:], "forget10_perturbed": perturbed[-60:],
             "holdout01": holdout[:20], "holdout05": holdout[:40], "holdout10": holdout,
             "retain_perturbed": perturbed[:60:3], "real_authors_perturbed": options,
             "world_facts_perturbed": options[::-1]}
    for name, records in files.items():
        (root / f"{name}.json").write_text("\n".join(json.dumps(r) for r in records))


@pytest.fixture(scope="module")
def tofu_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tofu")
    write_tofu(root)
    return root
