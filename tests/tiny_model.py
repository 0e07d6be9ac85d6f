"""A tiny random Llama with a small byte-level BPE tokenizer, built offline in seconds.

For fast tests of plumbing (engines, API, training loops); never for claims about quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from adapters import synth_people

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# SmolLM2's template without its default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    corpus = [f"{s.prompt} {s.response}" for s in synth_people(60, seed=seed)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: a size every vLLM CPU attention kernel supports
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so logits are peaked: greedy choices are then not
        # near-ties that float rounding could flip between engines.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def build_tiny_store(home: Path, model_dir: Path) -> None:
    """A shard store in `<home>/apa` as `lethe train` lays it out: 6 synthetic people in 2
    shards, each trained one step on the tiny model (hash embeddings: no sentence model)."""
    from adapters import ShardStore, TrainConfig
    from tests.embeddings import hash_embed

    store = ShardStore.create(home / "apa", synth_people(6, seed=0, facts_per_person=2),
                              hash_embed, shards=2, partitioner="random", group_by_owner=True,
                              seed=0, model_path=model_dir, base_model={"sha256": "tiny"},
                              train_config=TrainConfig(max_steps=1, batch_size=4, max_length=32))
    store.train(store.lineage.shard_ids())
