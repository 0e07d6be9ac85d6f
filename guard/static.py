"""Static embeddings: MiniLM distilled into one vector per word piece (model2vec), for the guard's
first stage (screen.py).

A text's static vector is the mean of its word pieces' rows: no transformer runs, so embedding
the thousands of windows of a long prompt costs about as much as tokenizing it. It is much
coarser than MiniLM (on TOFU, questions about other fictional authors sit as near a forgotten
one as its paraphrases do), so it never decides alone: it picks which pieces MiniLM reads.

Distillation, model2vec's recipe (`model2vec.distill`, whose `distill` extra would pin an older
`transformers` than vLLM needs, so the few lines are here): every word piece of MiniLM's vocabulary
is run through MiniLM as `[CLS] piece [SEP]` and mean-pooled (30,522 x 384), the rows are
reduced to `DIMS` principal components, and each is weighted by SIF (`SIF / (SIF + p)`, p its
Zipf probability by vocabulary rank). The result is saved and loaded as a model2vec
`StaticModel`, with the distillation's provenance beside it (`provenance.json`: the source
weights' sha256, the recipe, library versions). Done once per model, at the first use, into the
embedder's cache folder (~20 s on 2 vCPU; about a minute on this machine's slow days), written
elsewhere and renamed into place, under a lock that makes other processes wait for it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from base import made_once

from .errors import GuardError

DIMS = 256  # model2vec's default: PCA keeps what separates pieces, drops MiniLM's common offset
SIF = 1e-4  # model2vec's default SIF coefficient: frequent pieces weigh little
BATCH = 1024  # pieces per forward pass while distilling
PROVENANCE = "provenance.json"

log = logging.getLogger("lethe.guard")


def distill(model_path: Path, out: Path, weights_digest: str) -> None:
    """Write the static model distilled from the sentence-transformers MiniLM at `model_path`."""
    log.info("distilling the guard's static embedder from %s", model_path)
    import model2vec
    import tokenizers
    import torch
    import transformers
    from model2vec import StaticModel
    from transformers import AutoModel

    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(model_path / "tokenizer.json"))
    except Exception as e:  # the tokenizers library raises a bare Exception for a bad file
        raise GuardError(f"the guard's first stage distils a BERT-style model with a "
                         f"tokenizer.json; {model_path} has none it can read: {e}") from e
    vocab = tokenizer.get_vocab()
    if not {"[CLS]", "[SEP]"} <= set(vocab):
        raise GuardError(f"the guard's first stage distils a BERT-style model ([CLS] piece "
                         f"[SEP]); {model_path}'s vocabulary has no [CLS] and [SEP]")
    n = len(vocab)
    model = AutoModel.from_pretrained(model_path).eval()
    pooled = np.zeros((n, model.config.hidden_size), np.float32)  # (V, 384)
    with torch.inference_mode():
        for start in range(0, n, BATCH):
            piece = torch.arange(start, min(start + BATCH, n))  # (B,)
            ids = torch.stack([torch.full_like(piece, vocab["[CLS]"]), piece,
                               torch.full_like(piece, vocab["[SEP]"])], dim=1)  # (B, 3)
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           token_type_ids=torch.zeros_like(ids)).last_hidden_state  # (B, 3, 384)
            pooled[start:start + len(piece)] = hidden.mean(dim=1).numpy()
    centred = pooled - pooled.mean(axis=0)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred / (n - 1))  # ascending eigenvalues
    vectors = centred @ eigenvectors[:, ::-1][:, :DIMS]  # (V, DIMS)
    zipf = 1.0 / np.arange(2, n + 2)
    vectors *= (SIF / (SIF + zipf / zipf.sum()))[:, None]
    if not np.isfinite(vectors).all():
        raise GuardError(f"distilling {model_path} gave non-finite static vectors")
    StaticModel(vectors=vectors.astype(np.float32), tokenizer=tokenizer, normalize=True,
                config={"model_type": "model2vec", "hidden_dim": DIMS, "normalize": True},
                base_model_name=model_path.name).save_pretrained(out)
    (out / PROVENANCE).write_text(json.dumps({
        "source": str(model_path), "source_weights_sha256": weights_digest,
        "recipe": {"pooling": "mean of [CLS] piece [SEP]", "pca_dims": DIMS,
                   "sif_coefficient": SIF, "vocabulary": n},
        "versions": {"model2vec": model2vec.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__},
        "created_at": time.time()}, indent=1))


class StaticEmbedder:
    """texts -> (N, DIMS) float32 unit vectors of the model distilled from `model_path`,
    kept in `cache` as `<stem>.static/`."""

    def __init__(self, model_path: Path, cache: Path, stem: str, weights_digest: str):
        from model2vec import StaticModel

        # One distillation per cache folder (~1 min of every core here), which other processes
        # wait for and then load.
        self.folder = made_once(cache / f"{stem}.static",
                                lambda out: distill(model_path, out, weights_digest))
        self.provenance = json.loads((self.folder / PROVENANCE).read_text())
        self.model = StaticModel.from_pretrained(self.folder)
        self.dim = self.model.dim
        # The fast tokenizer refuses two threads at once ("Already borrowed").
        self._lock = threading.Lock()

    def words(self) -> frozenset[str]:
        """The whole words of the vocabulary (not `##` continuations or `[special]` tokens):
        the words MiniLM has as one piece, common ones; an invented name or a misspelling is
        none of them."""
        return frozenset(t for t in self.model.tokens if t.isalnum())

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            return self.model.encode(texts, max_length=None, use_multiprocessing=False
                                     ).astype(np.float32)
