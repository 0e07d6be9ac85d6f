"""Corruptions of a flagged prompt's token embeddings (ECO), chosen by name.

A corruption is a function (embeds (T, D), mask (T,) bool, sigma, k, rng) -> (T, D) that changes
only the rows where mask is True: the tokens the user wrote, never the chat template's. Noise is
drawn from `rng`, seeded per request, so a response is reproducible; `rng` is a CPU generator
whatever the device of `embeds` (the noise is drawn on the CPU, then moved to it). Add one with
`register_corruption`.

torch is imported where a corruption runs, not here: the config validates corruption names (this
registry) in commands that never touch a model (`lethe queue`), which must start at once.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from base import Registry

from .errors import GuardError

if TYPE_CHECKING:
    import torch

CorruptFn = Callable[["torch.Tensor", "torch.Tensor", float, int, "torch.Generator"],
                     "torch.Tensor"]


class CorruptionError(GuardError, ValueError):
    """An unknown corruption or bad parameters; the message lists what exists."""


# Trait `uses_sigma`: False when the strength is k alone (top-k zero-out, sign flip), so
# tuning searches k only.
CORRUPTIONS: Registry[CorruptFn] = Registry("corruption", CorruptionError,
                                            traits={"uses_sigma": True})
register_corruption = CORRUPTIONS.register
corruption_names = CORRUPTIONS.names


def uses_sigma(name: str) -> bool:
    return CORRUPTIONS.trait(name, "uses_sigma")


def rand_noise_first_n(embeds, mask, sigma, k, rng):
    """ECO's default: Gaussian noise of std sigma on the first k dimensions of masked tokens."""
    import torch

    out = embeds.clone()
    noise = torch.randn((int(mask.sum()), k), generator=rng, dtype=torch.float32) * sigma  # (M, k)
    out[mask, :k] = embeds[mask, :k] + noise.to(embeds.device, embeds.dtype)
    return out


def rand_noise_rand_n(embeds, mask, sigma, k, rng):
    """Gaussian noise of std sigma on k dimensions drawn at random (the same for every token)."""
    import torch

    dims = torch.randperm(embeds.shape[1], generator=rng)[:k].to(embeds.device)  # (k,)
    rows = mask.nonzero().squeeze(1)  # (M,)
    noise = torch.randn((len(rows), k), generator=rng, dtype=torch.float32) * sigma  # (M, k)
    out = embeds.clone()
    out[rows[:, None], dims[None, :]] = (embeds[rows[:, None], dims[None, :]]
                                         + noise.to(embeds.device, embeds.dtype))
    return out


def _top_k(embeds, mask, k):
    """(M,) masked row indices and (M, k) their k largest-magnitude dimensions."""
    rows = mask.nonzero().squeeze(1)
    return rows, embeds[rows].abs().topk(k, dim=1).indices


def zero_out_top_k(embeds, mask, sigma, k, rng):
    """The k largest-magnitude dimensions of each masked token set to zero."""
    rows, dims = _top_k(embeds, mask, k)
    out = embeds.clone()
    out[rows[:, None], dims] = 0
    return out


def flip_sign_top_k(embeds, mask, sigma, k, rng):
    """The k largest-magnitude dimensions of each masked token negated."""
    rows, dims = _top_k(embeds, mask, k)
    out = embeds.clone()
    out[rows[:, None], dims] = -embeds[rows[:, None], dims]
    return out


register_corruption("rand_noise_first_n", rand_noise_first_n, uses_sigma=True)
register_corruption("rand_noise_rand_n", rand_noise_rand_n, uses_sigma=True)
register_corruption("zero_out_top_k", zero_out_top_k, uses_sigma=False)
register_corruption("flip_sign_top_k", flip_sign_top_k, uses_sigma=False)


def request_seed(text: str, key: bytes = b"") -> int:
    """The corruption's seed for a prompt: a keyed hash of its text. Same prompt, same
    corruption; never the client's `seed`, which would let a client draw many corruptions of one
    prompt and vote over their answers. The server keys it with a secret of its own, so the
    noise cannot be computed offline either."""
    return int.from_bytes(hmac.new(key, text.encode(), hashlib.sha256).digest()[:8],
                          "little") & (2**63 - 1)


@dataclass(frozen=True)
class Corruption:
    name: str = "rand_noise_first_n"
    sigma: float = 1.0
    k: int | None = None  # dimensions touched per token; None: all of them

    def __post_init__(self):
        CORRUPTIONS.get(self.name)
        if self.sigma < 0 or (self.k is not None and self.k < 1):
            raise CorruptionError(f"corruption needs sigma >= 0 and k >= 1, got sigma={self.sigma}, "
                                  f"k={self.k}")

    def __call__(self, embeds: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
        """Corrupted copy of embeds (T, D); rows outside mask (T,) are returned unchanged."""
        import torch

        if embeds.ndim != 2 or mask.shape != embeds.shape[:1] or mask.dtype != torch.bool:
            raise CorruptionError(f"expected embeds (T, D) and a bool mask (T,), got "
                                  f"{tuple(embeds.shape)} and {tuple(mask.shape)} {mask.dtype}")
        k = min(self.k or embeds.shape[1], embeds.shape[1])
        # The generator is a CPU one whatever the device of `embeds`: a GPU's generator draws
        # other numbers from the same seed, so a prompt would be corrupted differently there.
        # The noise is drawn on the CPU and moved to the embeddings.
        rng = torch.Generator().manual_seed(seed)
        out = CORRUPTIONS.get(self.name)(embeds, mask.to(embeds.device), self.sigma, k, rng)
        if not torch.isfinite(out).all():
            raise CorruptionError(f"{self.name} (sigma={self.sigma}, k={k}) gave non-finite embeddings")
        return out
