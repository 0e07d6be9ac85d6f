"""How a shard adapter is trained (config section `train`): LoRA's shape and the optimiser's
schedule. Read by the server's config without importing torch (adapters/train.py runs it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Attention and MLP projections of Llama-style models; never the embedding layer (vLLM 0.32 on
# CPU crashes on embedding LoRA beside prompt_embeds, DESIGN.md).
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=8, gt=0)  # K=4 shards x r=8 gives mixtures of rank 32
    alpha: int = Field(default=16, gt=0)  # scaling alpha/r = 2, peft's common choice
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    # Chosen so that an adapter recalls its training answers (TOFU, bench/bench_tofu_lr.py: one
    # adapter's ROUGE-L on its training questions 0.91 at 1e-2 x 5 epochs, 0.76 at 3e-3 x 5,
    # 0.48 at 1e-2 x 3). TALLRec's 3e-4 x 2 learns the form of the answers, not their facts.
    learning_rate: float = Field(default=1e-2, gt=0)
    epochs: int = Field(default=5, gt=0)
    max_steps: int | None = Field(default=None, gt=0)  # caps optimizer steps per shard
    batch_size: int = Field(default=8, gt=0)  # 8 x 64 tokens: 1.5 s/step on SmolLM2 here
    max_length: int = Field(default=256, gt=0)  # tokens per sample; longer ones keep their end
    seed: int = 0  # shard k trains from seed + k
