"""The served subject scores and answers as the server computes: a shard mixture run in the
engine's way (per-row scales over the stacked shard adapters) gives what the same mixture
materialised as one adapter gives, and each row of a batch runs its own mixture."""

from __future__ import annotations

import numpy as np
import pytest

from serving.config import load_config
from serving.evaluation import load_tofu
from serving.evaluation.lifecycle import Lifecycle
from serving.evaluation.subjects import ServedSubject
from serving.shards import create_store


@pytest.fixture(scope="module")
def lifecycle(tofu_dir, lethe_home, tiny_model_dir, tmp_path_factory):
    config = load_config(None, overrides={
        "home": str(lethe_home), "model.source": str(tiny_model_dir), "shards.count": 2,
        "train.max_steps": 10, "train.batch_size": 4, "train.learning_rate": 5e-2,
        "route.quantum": 0.0, "route.tau": 100.0})  # unrounded, sharp: weights vary by question
    data = load_tofu(tofu_dir, "forget01", 2)
    life = Lifecycle(config, tmp_path_factory.mktemp("subjects"), log=lambda line: None)
    store = create_store(config, life.work / "original", data.train, embed=life.embed)
    life.train("original", store, lambda step: None)
    return life, store, data


def test_mixtures_in_the_engine_score_and_answer_as_materialised_ones(lifecycle):
    life, store, data = lifecycle
    items = data.sets["forget"][:6] + data.sets["retain"][:4]
    pairs = [(i.prompt, a) for i in items for a in (i.answer, *i.perturbed_answers)]
    subjects = [life.served(store, life.guard(),
                            route=life.config.route.model_copy(update={"mixing": mixing}))
                for mixing in ("in-engine", "materialised")]
    in_engine, materialised = [s.logprobs(pairs) for s in subjects]
    assert np.isfinite(in_engine).all()
    assert np.allclose(in_engine, materialised, atol=1e-4)
    # and in a batch each row runs its own mixture: as each question scored alone (by a subject
    # of its own, which has computed nothing yet: the evaluation's would reuse the batch's rows)
    fresh = ServedSubject(life.model, life.tokenizer, subjects[0].pipeline)
    alone = [fresh.logprobs([pair])[0] for pair in pairs[::4]]
    assert fresh.counts["reused"] == 0
    assert np.allclose(in_engine[::4], alone, atol=1e-4)
    questions = [i.prompt for i in items]
    assert subjects[0].answers(questions) == subjects[1].answers(questions)
    # the comparison is of many mixtures, not one: each weight vector materialised on disk
    assert len(list((store.root / "mixtures").glob("*/mix-*"))) > 2
