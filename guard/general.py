"""General requests, generated offline: the negatives no forget request is about.

The guard must not fire on how-to questions, arithmetic, science, writing requests, questions
about real people and books, or world facts. These are generated from templates and word lists
(seeded, no data to download): `lethe guard train` adds them to its negatives and the server
calibrates every exemplar's threshold against them (guard.py). Categories are kept apart so a
benchmark can report a false-positive rate per kind of request, and every kind's pool is split
once, in fixed halves: the `train` half is what the guard learns and calibrates on, the `test`
half what a benchmark measures it on.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import random
from typing import TYPE_CHECKING

import numpy as np

from base import write_atomic

if TYPE_CHECKING:
    from .embed import SentenceEmbedder

log = logging.getLogger("lethe.guard")

_TASKS = ["boil an egg", "change a flat tyre", "tie a bowline knot", "set up a Python virtual "
          "environment", "bake sourdough bread", "write a cover letter", "clean a cast iron pan",
          "learn to juggle", "plant tomatoes", "fix a leaking tap", "back up my phone",
          "prepare for a job interview", "make cold brew coffee", "sharpen a kitchen knife",
          "remove a wine stain", "start running", "meditate", "budget my salary",
          "train a puppy", "paint a wall", "reset a router", "fold a fitted sheet",
          "negotiate a raise", "write a unit test", "read a nutrition label"]
_HOW = ["How do I {}?", "What is the best way to {}?", "Can you explain how to {}?",
        "Give me step-by-step instructions to {}.", "Any tips on how to {}?"]

_CONCEPTS = ["photosynthesis", "plate tectonics", "the water cycle", "black holes",
             "natural selection", "quantum entanglement", "inflation in economics",
             "the immune system", "how vaccines work", "machine learning", "the greenhouse effect",
             "how a compiler works", "continental drift", "the Doppler effect", "DNA replication",
             "supply and demand", "the theory of relativity", "how batteries store energy",
             "why the sky is blue", "how airplanes stay in the air"]
_SCIENCE = ["Explain {} in simple terms.", "What is {}?", "Can you summarise {}?",
            "Why does {} matter?", "Describe {} to a ten-year-old."]

_FORMS = ["haiku", "short poem", "limerick", "two-sentence story", "product description",
          "birthday message", "thank-you note", "tweet", "riddle", "motivational quote"]
_TOPICS = ["autumn leaves", "the sea", "a lighthouse", "a rainy Monday", "coffee", "a lost key",
           "the moon", "a city market", "mountains", "a robot learning to paint", "friendship",
           "a train journey", "winter mornings", "a garden in spring", "the night sky"]
_WRITE = ["Write a {} about {}.", "Compose a {} about {}.", "Could you write a {} about {}?"]

_MATH = ["What is {a} times {b}?", "What is {a} plus {b}?", "Divide {a} by {b}.",
         "What is {a} squared?", "Solve for x: {a}x + {b} = 0.", "Is {a} a prime number?",
         "What is {a} percent of {b}?", "Convert {a} kilometres to miles."]

_PEOPLE = ["William Shakespeare", "Jane Austen", "Leo Tolstoy", "Toni Morrison",
           "Gabriel Garcia Marquez", "Haruki Murakami", "Chinua Achebe", "Virginia Woolf",
           "Mark Twain", "Charles Dickens", "George Orwell", "J.K. Rowling", "Albert Einstein",
           "Marie Curie", "Isaac Newton", "Ada Lovelace", "Nelson Mandela", "Frida Kahlo",
           "Leonardo da Vinci", "Mahatma Gandhi", "Agatha Christie", "Ernest Hemingway",
           "Franz Kafka", "Fyodor Dostoevsky", "Emily Dickinson", "Homer", "Dante Alighieri",
           "Miguel de Cervantes", "Chimamanda Ngozi Adichie", "Stephen King"]
_PERSON = ["Who was {}?", "When was {} born?", "What is {} best known for?",
           "Tell me about the life of {}.", "Which books did {} write?",
           "Where did {} grow up?", "What awards did {} win?"]
_BOOKS = ["Pride and Prejudice", "War and Peace", "One Hundred Years of Solitude", "1984",
          "Things Fall Apart", "Moby-Dick", "Don Quixote", "The Great Gatsby",
          "To Kill a Mockingbird", "Crime and Punishment", "The Odyssey", "Beloved",
          "Norwegian Wood", "Mrs Dalloway", "The Trial", "Great Expectations", "Hamlet",
          "Jane Eyre", "The Hobbit", "Frankenstein"]
_BOOK = ["Who wrote {}?", "What is {} about?", "When was {} published?",
         "What are the main themes of {}?", "Who is the main character of {}?"]

_COUNTRIES = ["France", "Japan", "Brazil", "Kenya", "Canada", "Australia", "India", "Egypt",
              "Norway", "Mexico", "Argentina", "Vietnam", "Italy", "Germany", "Peru", "Ghana",
              "Spain", "Chile", "Thailand", "Poland"]
_COUNTRY = ["What is the capital of {}?", "What language is spoken in {}?",
            "What currency does {} use?", "How many people live in {}?",
            "What is the highest mountain in {}?"]
_FACTS = ["How far is the Moon from the Earth?", "What is the boiling point of water?",
          "How many continents are there?", "What is the largest ocean?",
          "Which planet is closest to the Sun?", "How many bones are in the human body?",
          "What is the speed of light?", "Which is the longest river in the world?",
          "What is the chemical symbol for gold?", "How many days are in a leap year?"]


def _fill(templates: list[str], fillers: list) -> list[str]:
    return [t.format(*f) if isinstance(f, tuple) else t.format(f)
            for t, f in itertools.product(templates, fillers)]


def general_prompts(per_kind: int = 100, seed: int = 0, split: str = "train"
                    ) -> dict[str, list[str]]:
    """kind -> up to `per_kind` distinct prompts of the `split` half ("train" or "test") of its
    pool, sampled with `seed`."""
    numbers = [(a, b) for a, b in zip(range(7, 999, 13), range(3, 99, 2))]
    kinds = {
        "how_to": _fill(_HOW, _TASKS),
        "science": _fill(_SCIENCE, _CONCEPTS),
        "writing": _fill(_WRITE, list(itertools.product(_FORMS, _TOPICS))),
        "math": [t.format(a=a, b=b) for t in _MATH for a, b in numbers],
        "real_people_and_books": _fill(_PERSON, _PEOPLE) + _fill(_BOOK, _BOOKS),
        "world_facts": _fill(_COUNTRY, _COUNTRIES) + _FACTS,
    }
    rng, halves = random.Random(seed), {}
    for kind, pool in kinds.items():
        random.Random(kind).shuffle(pool)  # one fixed split per kind, whatever the seed
        half = pool[:len(pool) // 2] if split == "train" else pool[len(pool) // 2:]
        halves[kind] = rng.sample(half, min(per_kind, len(half)))
    return halves


def general_vectors(embedder: SentenceEmbedder) -> dict[str, np.ndarray]:
    """`general-<i>` -> (D,) vector of each general request of the `train` half: the reference
    negatives that a server calibrates exemplars against, beside its live training prompts.

    The texts are Lethe's own, never a client's or a forget request's, and the same at every
    start, so their vectors are kept in the embedder's cache folder, named by the texts' digest
    (467 texts: ~5 s of MiniLM here at every server start otherwise). Each read embeds the first
    text again: a vector that differs from the kept one (another runtime, a damaged file) has
    them all embedded and written again."""
    texts = [p for prompts in general_prompts().values() for p in prompts]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = embedder.derived(f"general-{digest}.npy")
    probe = embedder(texts[:1])  # (1, D)
    try:
        vectors = np.load(path, allow_pickle=False)  # (G, D)
        kept = vectors.shape == (len(texts), probe.shape[1]) and np.allclose(
            vectors[:1], probe, atol=1e-4)
    except (OSError, ValueError, EOFError):  # missing, or not an array
        kept = False
    if not kept:
        vectors = embedder(texts)  # (G, D)
        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, buffer.getvalue())
        except OSError as e:  # a read-only cache folder: served all the same, embedded next time
            log.warning("the general requests' vectors could not be kept in %s: %s",
                        path.parent, e)
    return {f"general-{i}": v for i, v in enumerate(vectors)}
