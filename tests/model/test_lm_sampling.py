"""Sampling: top-k respected, temperature, seeds reproduce, slots independent."""

import torch

from duplex.model.sampling import SamplingSettings, exponential_noise, sample, step_key, uniform_noise


def _draws(logits, temperature, top_k, n=4000, draw=0):
    settings = SamplingSettings(n, temperature, top_k, logits.shape[-1])
    key = step_key(torch.arange(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    return sample(logits.expand(n, -1), settings, exponential_noise(key, draw, settings.k_max, 1)[:, 0])


def test_uniform_noise_is_uniform_and_deterministic():
    key = step_key(torch.tensor([1, 2, 3]), torch.tensor([0, 5, 10**9]))
    u = uniform_noise(key, 3, 50_000)
    assert (u > 0).all() and (u < 1).all()
    assert torch.allclose(u.mean(1), torch.full((3,), 0.5), atol=0.01)
    assert torch.allclose(u.std(1), torch.full((3,), 12 ** -0.5), atol=0.01)
    assert torch.equal(u, uniform_noise(key, 3, 50_000))
    assert not torch.equal(u, uniform_noise(key, 4, 50_000))  # another draw, other numbers
    assert len(set(key.tolist())) == 3
    # a row depends on its own key only
    assert torch.equal(u[1:2], uniform_noise(key[1:2], 3, 50_000))
    # the draws of a step computed at once are the same numbers as one at a time
    many = uniform_noise(key, 2, 300, count=4)
    assert many.shape == (3, 4, 300)
    for i in range(4):
        assert torch.equal(many[:, i], uniform_noise(key, 2 + i, 300))
    assert torch.equal(exponential_noise(key, 2, 300, 4), -torch.log(many))
    # neighbouring seeds and steps give unrelated keys
    keys = step_key(torch.arange(1000), torch.zeros(1000, dtype=torch.long))
    assert len(set(keys.tolist())) == 1000


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
    settings = SamplingSettings(3, 1.0, 3, k_max=3)
    settings.set(0, 0.0, 3)  # greedy
    settings.set(1, 1.0, 1)  # top-1
    assert settings.any_sampling and not settings.all_sampling
    logits = torch.tensor([[0.0, 1.0, 0.5]]).expand(3, -1)
    for step in range(20):
        noise = exponential_noise(step_key(torch.arange(3), torch.full((3,), step)), 0, 3, 1)[:, 0]
        out = sample(logits, settings, noise)
        assert out[0] == 1 and out[1] == 1
    settings.set(None, 0.0, 5)  # everyone greedy; k is capped at k_max
    assert not settings.any_sampling and int(settings.top_k.max()) == 3


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


def test_slot_sampling_fields_are_what_the_query_sets():
    """A slot's sampling is named once: the server's query table maps onto SlotSampling's fields, nothing else."""
    from dataclasses import fields

    from duplex.model.sampling import SlotSampling
    from duplex.serving.protocol import SAMPLING_QUERY, parse_query

    assert {setting for setting, _, _ in SAMPLING_QUERY.values()} == {f.name for f in fields(SlotSampling)}
    q = parse_query("/api/chat?audio_temperature=0.5&audio_topk=40&text_temperature=0.1&text_topk=7&seed=3"
                    "&audio_seed=9")
    assert SlotSampling().replace(**q.sampling) == SlotSampling(0.5, 40, 0.1, 7, 9)  # audio_seed wins
    assert parse_query("/api/chat?seed=3&audio_seed=x").sampling == {}  # as Kyutai's: a bad audio_seed, no seed
