"""The embedder backends compute the same MiniLM vectors: onnx to fp32 rounding of torch (the
reference), onnx-int8 close enough that neighbours stay neighbours; the exported graph is
prepared once per cache folder, also by two processes at once."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import numpy as np
import pytest

from guard import GuardError, SentenceEmbedder, embedder_names
from guard.embed import default_model_path, first_pieces

TEXTS = [
    "hi",
    "What is the full name of the author born in Kuwait City on 08/09/1956?",
    "How do I bake sourdough bread at home with a starter?",
    "Ünïcödé 東京 🙂 — emoji and accents",
    " ".join(["lorem ipsum dolor"] * 150),  # past the 256 word pieces MiniLM reads: truncated
    *[f"Question number {i} about the weather in town {i * 7}?" for i in range(11)],  # > a batch
]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    cache = tmp_path_factory.mktemp("embedder")
    return {name: SentenceEmbedder(backend=name, cache_dir=cache) for name in embedder_names()}


def test_every_backend_gives_unit_vectors_of_the_same_dimension(backends):
    for name, embed in backends.items():
        vectors = embed(TEXTS)
        assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32, name
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5), name
        assert embed([]).shape == (0, 384)


def test_onnx_equals_torch_to_fp32_rounding_in_the_callers_order(backends):
    reference = backends["torch"](TEXTS)
    assert np.abs(backends["onnx"](TEXTS) - reference).max() < 1e-5
    one_by_one = np.concatenate([backends["onnx"]([t]) for t in TEXTS])  # no padding effects
    assert np.abs(one_by_one - reference).max() < 1e-5


PAIRS = [  # a question and its rewording, on topics far apart
    ("Where was the author Basil Al-Kuwaiti born?", "In which city was Basil Al-Kuwaiti born?"),
    ("How do I bake sourdough bread?", "What is the way to make sourdough bread at home?"),
    ("What is the capital of Australia?", "Which city is Australia's capital?"),
    ("Write a haiku about autumn leaves.", "Compose a short haiku on falling autumn leaves."),
    ("How many moons does Mars have?", "What is the number of Mars's moons?"),
    ("Explain how vaccines train the immune system.", "How does a vaccine teach immunity?"),
]


def test_a_texts_vector_does_not_depend_on_what_it_is_embedded_with(backends):
    for name, embed in backends.items():
        alone = embed([TEXTS[1]])[0]
        beside = embed([TEXTS[4], TEXTS[1], TEXTS[0]])[1]  # next to a long and a short text
        assert np.abs(alone - beside).max() < 1e-5, name  # the guard drops a negative equal to
        # an exemplar's own text (similarity >= 0.999): that must not depend on batching
    for name in ("onnx", "onnx-int8"):  # alone a long text runs on every core, beside others on
        embed = backends[name]  # one: bit for bit the same vectors, in the caller's order
        together = embed(TEXTS)
        assert np.array_equal(together, np.concatenate([embed([t]) for t in TEXTS])), name
        assert np.array_equal(embed(TEXTS[::-1]), together[::-1]), name


def test_a_long_texts_first_word_pieces_are_those_of_the_whole_text():
    """onnx tokenizes only as much of a long prompt as MiniLM reads: the same pieces as the
    whole text's, whatever its spacing (cut mid-word, runs without spaces, long words that
    become [UNK], CJK, symbols)."""
    import random

    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()
    rng = random.Random(0)
    words = ["where", "does", "fenlus", "lodargal", "live", "?", "--", "东京", "é", "x" * 150,
             "supercalifragilistic" * 4, "a\tb\nc", "🙂"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3000))) for _ in range(60)]
    texts += ["-" * 9000 + " where does he live", "y" * 5000 + " where", "東" * 4000,
              "ab " * 20 + "z" * 3000 + " q" * 300, ("word " * 300).strip()]
    for text in texts:
        head, whole = first_pieces(tokenizer, text, 256), tokenizer.encode(text)
        assert (head.ids, head.attention_mask, head.type_ids) == (
            whole.ids, whole.attention_mask, whole.type_ids), text[:80]


def test_int8_stays_close_and_keeps_each_rewording_nearest_its_question(backends):
    texts = [t for pair in PAIRS for t in pair]
    reference, int8 = backends["torch"](texts), backends["onnx-int8"](texts)
    assert (reference * int8).sum(axis=1).min() > 0.95
    sims = int8 @ int8.T  # (12, 12)
    np.fill_diagonal(sims, -1)
    assert list(sims.argmax(axis=1)) == [i ^ 1 for i in range(len(texts))]  # 0<->1, 2<->3, ...


def test_an_unknown_backend_is_named_with_the_registered_ones():
    with pytest.raises(GuardError, match="unknown embedder 'tensorrt'.*onnx, onnx-int8, torch"):
        SentenceEmbedder(backend="tensorrt")


def test_two_processes_preparing_one_cache_both_get_the_whole_graph(tmp_path):
    script = ("import json, logging, sys; from guard import SentenceEmbedder; "
              "logging.basicConfig(level=logging.INFO); "
              "e = SentenceEmbedder(backend='onnx-int8', cache_dir=sys.argv[1]); "
              "print(json.dumps(e(['Where does Vosmi Ulkathi live?'])[0].tolist()))")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    first, second = (np.array(json.loads(out)) for out, _ in outputs)
    assert np.abs(first - second).max() < 1e-5
    # one process wrote each graph, the other waited for it and read it
    writes = [line for _, err in outputs for line in err.splitlines() if "(once)" in line]
    assert len(writes) == 2 and sum(w.endswith(".int8.onnx (once)") for w in writes) == 1, writes
    graphs = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.suffix == ".onnx"}
    assert sorted(p.name.split(".", 1)[1] for p in graphs) == ["int8.onnx", "onnx"]
    SentenceEmbedder(backend="onnx-int8", cache_dir=tmp_path)  # reused, not written again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.suffix == ".onnx"} == graphs


def test_threads_embedding_at_once_get_what_each_would_alone(backends):
    """The server embeds chats and forget requests from several threads; no lock is held for a
    whole call, and no backend mixes the threads' texts up."""
    texts = [f"Where does person number {i} live, and since when?" for i in range(24)]
    for name, embed in backends.items():
        alone = embed(texts)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda i: embed(texts[i::4]), range(4)))
        for i, rows in enumerate(together):
            np.testing.assert_allclose(rows, alone[i::4], atol=1e-5, err_msg=name)
