"""Sampling: top-k respected, temperature, seeds reproduce, slots independent."""

import torch

from duplex.sampling import sample, uniform_noise


def _draws(logits, temperature, top_k, n=4000, draw=0):
    b = n
    seed = torch.arange(b, dtype=torch.long)
    step = torch.zeros(b, dtype=torch.long)
    return sample(logits.expand(b, -1), torch.full((b,), temperature), torch.full((b,), top_k), logits.shape[-1],
                  seed, step, draw)


def test_uniform_noise_is_uniform_and_deterministic():
    seed, step = torch.tensor([1, 2, 3]), torch.tensor([0, 5, 10**9])
    u = uniform_noise(seed, step, 3, 50_000)
    assert (u > 0).all() and (u < 1).all()
    assert torch.allclose(u.mean(1), torch.full((3,), 0.5), atol=0.01)
    assert torch.allclose(u.std(1), torch.full((3,), 12 ** -0.5), atol=0.01)
    assert torch.equal(u, uniform_noise(seed, step, 3, 50_000))
    assert not torch.equal(u, uniform_noise(seed, step, 4, 50_000))  # another draw, other numbers
    # a row depends on its own seed and step only
    assert torch.equal(u[1:2], uniform_noise(seed[1:2], step[1:2], 3, 50_000))


def test_frequencies_follow_the_distribution():
    probs = torch.tensor([0.45, 0.3, 0.15, 0.07, 0.03])
    tokens = _draws(probs.log()[None], 1.0, 5, n=20_000)
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert torch.allclose(freq, probs, atol=0.015)


def test_tokens_outside_the_top_k_never_appear():
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(1))
    allowed = set(logits[0].topk(7).indices.tolist())
    tokens = _draws(logits * 0.01, 1.5, 7)  # nearly flat: without top-k every token would show up
    assert set(tokens.tolist()) <= allowed and len(set(tokens.tolist())) == 7


def test_top_k_renormalises_within_the_kept_tokens():
    probs = torch.tensor([0.4, 0.2, 0.2, 0.2])
    freq = torch.bincount(_draws(probs.log()[None], 1.0, 2, n=20_000), minlength=4).float() / 20_000
    assert abs(freq[0] - 2 / 3) < 0.015 and int((freq > 0).sum()) == 2  # token 0 and one of the tied 0.2s


def test_temperature_sharpens_and_zero_is_greedy():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    hot = torch.bincount(_draws(logits, 2.0, 4), minlength=4)
    cold = torch.bincount(_draws(logits, 0.3, 4), minlength=4)
    assert cold[0] > hot[0]
    assert (_draws(logits, 0.0, 4) == 0).all()


def test_per_row_settings():
    logits = torch.tensor([[0.0, 1.0, 0.5]]).expand(3, -1)
    t = torch.tensor([0.0, 1.0, 1.0])
    k = torch.tensor([3, 1, 3])
    out = sample(logits, t, k, 3, torch.arange(3), torch.zeros(3, dtype=torch.long), 0)
    assert out[0] == 1 and out[1] == 1  # greedy row, and top-1 row


def test_generator_seeds_reproduce_and_differ(small_lm, lm_io):
    user = lm_io["gen_user_tokens"]

    def run(seed, batch=2):
        gen = small_lm.generator(batch, seed=seed, temperature=1.0, text_temperature=1.0)
        return torch.stack([gen.step(user[:batch, :, s]) for s in range(12)], -1)

    a, b, c = run(123), run(123), run(124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Sampling slot 0 alone or in a batch draws the same numbers: slots never share a random stream.
    assert torch.equal(run(123, batch=1)[0], a[0])


def test_top_k_one_is_greedy(small_lm, lm_io):
    user = lm_io["gen_user_tokens"]
    gen = small_lm.generator(2, temperature=5.0, top_k=1, text_temperature=5.0, text_top_k=1, seed=9)
    out = torch.stack([gen.step(user[:, :, s]) for s in range(20)], -1)
    assert torch.equal(out, lm_io["gen_out"][:, :, :20])
