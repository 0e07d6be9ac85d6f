"""Each corruption changes exactly the masked tokens and the dimensions it names, reproducibly."""

import pytest
import torch

from guard import Corruption, CorruptionError, corruption_names, register_corruption, request_seed

T, D = 6, 16
MASK = torch.tensor([False, True, True, False, True, False])


@pytest.fixture
def embeds():
    return torch.randn(T, D, generator=torch.Generator().manual_seed(0))


def changed(before, after):
    """(T, D) bool: which entries differ."""
    return before != after


def test_rand_noise_first_n_touches_the_first_k_dims_of_masked_tokens(embeds):
    out = Corruption("rand_noise_first_n", sigma=0.5, k=4)(embeds, MASK, seed=1)
    expected = torch.zeros(T, D, dtype=torch.bool)
    expected[MASK, :4] = True
    assert torch.equal(changed(embeds, out), expected)


def test_rand_noise_rand_n_touches_k_dims_of_masked_tokens_only(embeds):
    out = Corruption("rand_noise_rand_n", sigma=0.5, k=5)(embeds, MASK, seed=1)
    diff = changed(embeds, out)
    assert not diff[~MASK].any()
    dims = diff[MASK].any(0)
    assert dims.sum() == 5 and torch.equal(diff[MASK], dims.expand(int(MASK.sum()), D))


@pytest.mark.parametrize("name", ["zero_out_top_k", "flip_sign_top_k"])
def test_top_k_corruptions_touch_the_largest_dims_of_masked_tokens(embeds, name):
    out = Corruption(name, k=3)(embeds, MASK, seed=1)
    diff = changed(embeds, out)
    assert not diff[~MASK].any()
    for row in MASK.nonzero().squeeze(1):
        top = set(embeds[row].abs().topk(3).indices.tolist())
        assert set(diff[row].nonzero().squeeze(1).tolist()) == top
        expected = 0 if name == "zero_out_top_k" else -embeds[row, list(top)]
        assert torch.equal(out[row, list(top)], torch.zeros(3) if name == "zero_out_top_k"
                           else expected)


@pytest.mark.parametrize("name", corruption_names())
def test_corruption_is_reproducible_from_its_seed(embeds, name):
    corruption = Corruption(name, sigma=1.0, k=4)
    assert torch.equal(corruption(embeds, MASK, seed=7), corruption(embeds, MASK, seed=7))
    assert torch.equal(corruption(embeds, torch.zeros(T, dtype=torch.bool), seed=7), embeds)


def test_noise_depends_on_the_seed_and_the_seed_on_the_prompt(embeds):
    corruption = Corruption("rand_noise_first_n", sigma=1.0)
    assert not torch.equal(corruption(embeds, MASK, seed=1), corruption(embeds, MASK, seed=2))
    assert request_seed("a prompt") == request_seed("a prompt") != request_seed("another")
    assert request_seed("a prompt", key=b"server 1") != request_seed("a prompt", key=b"server 2")


def test_bad_corruptions_are_refused_with_what_exists(embeds):
    with pytest.raises(CorruptionError, match="registered: flip_sign_top_k"):
        Corruption("gaussian")
    with pytest.raises(CorruptionError, match="sigma >= 0"):
        Corruption(sigma=-1.0)
    with pytest.raises(CorruptionError, match="bool mask"):
        Corruption()(embeds, MASK.long(), seed=0)
    with pytest.raises(CorruptionError, match="non-finite"):
        Corruption(sigma=float("inf"))(embeds, MASK, seed=0)
    with pytest.raises(CorruptionError, match="already registered"):
        register_corruption("zero_out_top_k", lambda *a: a[0], uses_sigma=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", corruption_names())
def test_a_prompt_is_corrupted_alike_on_a_gpu_and_on_the_cpu(embeds, name):
    # the noise is drawn from a CPU generator whatever the device, then moved
    corruption = Corruption(name, sigma=1.0, k=4)
    on_gpu = corruption(embeds.cuda(), MASK, seed=7)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), corruption(embeds, MASK, seed=7))
