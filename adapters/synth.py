"""A seeded generator of fictitious people and facts about them, for tests and demos.

Each person is an owner with several facts; each fact is one sample (a question and its answer),
so forgetting an owner removes several samples. Names are drawn from syllables, so they are
fictitious and unlikely to be known to any pretrained model.
"""

from __future__ import annotations

import random

from .samples import Sample

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sel", "qui", "dar", "bel", "nys", "zor",
              "fen", "lus", "mar", "thi", "gal", "rin", "vos", "ul"]
_CITIES = ["Quillmoor", "Ostravel", "Brinnick", "Saltmere", "Vey Harbor", "Dunmarrow", "Kelvane",
           "Larkspire", "Tolvik", "Emberfold"]
_JOBS = ["glassblower", "cartographer", "beekeeper", "violin maker", "lighthouse keeper",
         "astronomer", "clockmaker", "ferry pilot", "herbalist", "bookbinder"]
_PETS = ["a grey parrot", "two tortoises", "a three-legged cat", "a ferret", "a pond of koi",
         "an old sheepdog", "a hedgehog", "a pair of finches"]
_FOODS = ["plum dumplings", "smoked eel", "saffron rice", "barley soup", "fig tart",
          "pickled herring", "chestnut bread", "lemon cake"]

# (question template, answer template); {name} and {value} are filled per person.
_FACTS = [
    ("Where does {name} live?", "{name} lives in {city}.", "city", _CITIES),
    ("What does {name} do for a living?", "{name} works as a {job}.", "job", _JOBS),
    ("What pet does {name} have?", "{name} has {pet}.", "pet", _PETS),
    ("What is {name}'s favourite food?", "{name}'s favourite food is {food}.", "food", _FOODS),
    ("In which year was {name} born?", "{name} was born in {year}.", "year", None),
]


def _name(rng: random.Random) -> str:
    def word(n: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()

    return f"{word(2)} {word(3)}"


def synth_people(n_people: int, seed: int = 0, facts_per_person: int = len(_FACTS)) -> list[Sample]:
    """`facts_per_person` samples for each of `n_people` owners, reproducible from `seed`."""
    if not 1 <= facts_per_person <= len(_FACTS):
        raise ValueError(f"facts_per_person must be in 1..{len(_FACTS)}, got {facts_per_person}")
    rng = random.Random(seed)
    names: set[str] = set()
    samples = []
    for p in range(n_people):
        name = _name(rng)
        while name in names:
            name = _name(rng)
        names.add(name)
        owner = f"person-{p:04d}"
        for f, (question, answer, key, choices) in enumerate(_FACTS[:facts_per_person]):
            value = rng.choice(choices) if choices else str(rng.randint(1900, 2005))
            samples.append(Sample(
                id=f"{owner}-fact{f}",
                owner=owner,
                prompt=question.format(name=name),
                response=answer.format(name=name, **{key: value}),
            ))
    return samples
