"""The LM against reference vectors produced by Kyutai's implementation (moshi 0.2.13, CPU, float32)."""

import pytest
import torch


def test_forward_train_logits_and_masks(small_lm, lm_io):
    out = small_lm.forward_train(lm_io["codes"][:, :, :12])
    assert torch.equal(out.mask, lm_io["fwd_mask"])
    assert torch.equal(out.text_mask, lm_io["fwd_text_mask"])
    assert out.logits.shape == lm_io["fwd_logits"].shape and out.text_logits.shape == lm_io["fwd_text_logits"].shape
    torch.testing.assert_close(out.logits[out.mask], lm_io["fwd_logits"][out.mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.text_logits[out.text_mask], lm_io["fwd_text_logits"][out.text_mask],
                               atol=1e-4, rtol=0)
    assert torch.isnan(out.logits[~out.mask]).all()


def _run(gen, user_tokens, steps=40):
    return torch.stack([gen.step(user_tokens[:, :, s]) for s in range(steps)], dim=-1)


def test_greedy_generation_identical(small_lm, lm_io):
    """40 steps with a 16-step attention context: the KV ring wraps more than twice."""
    out = _run(small_lm.generator(2, greedy=True), lm_io["gen_user_tokens"])
    assert torch.equal(out, lm_io["gen_out"])
    valid = lm_io["gen_valid"].bool()
    assert (out[:, :, ~valid] == -2).all() and (out[:, :, valid] >= 0).all()


@pytest.mark.parametrize("row", [0, 1])
def test_greedy_generation_batch_of_one(small_lm, lm_io, row):
    out = _run(small_lm.generator(1, greedy=True), lm_io["gen_user_tokens"][row:row + 1])
    assert torch.equal(out, lm_io["gen_out"][row:row + 1])


def test_slot_isolation_with_resets(small_lm, lm_io):
    """Slot 2 of a batch of 4 equals the same conversation run alone, while the other slots get other input
    and are reset at different times."""
    user = lm_io["gen_user_tokens"]
    gen = small_lm.generator(4, greedy=True)
    noise = torch.Generator().manual_seed(0)
    outs = []
    for s in range(40):
        codes = torch.randint(0, small_lm.config.card, (4, 8), generator=noise)
        codes[2] = user[0, :, s]
        if s in (5, 17, 30):
            gen.reset(torch.tensor([s == 5, s == 17, False, s in (17, 30)]))
        outs.append(gen.step(codes))
    assert torch.equal(torch.stack(outs, -1)[2], lm_io["gen_out"][0])


def test_reset_slot_restarts_at_position_zero(small_lm, lm_io):
    user = lm_io["gen_user_tokens"]
    gen = small_lm.generator(2, greedy=True)
    for s in range(23):
        gen.step(user[:, :, s])
    gen.reset(torch.tensor([False, True]))
    codes = user[:, :, :10].clone()
    codes[0] = user[0, :, 23:33]
    out = torch.stack([gen.step(codes[:, :, s]) for s in range(10)], -1)
    assert torch.equal(out[1], lm_io["gen_out"][1, :, :10])  # slot 1 starts over
    assert torch.equal(out[0], lm_io["gen_out"][0, :, 23:33])  # slot 0 continues


def test_inactive_slots_do_not_advance(small_lm, lm_io):
    user = lm_io["gen_user_tokens"]
    gen = small_lm.generator(2, greedy=True)
    got = []
    for s in range(20):
        gen.step(user[:, :, s], active=torch.tensor([True, False]))  # slot 1 sits out
    for s in range(20):
        got.append(gen.step(torch.stack([user[0, :, 20 + s], user[1, :, s]]))[1])
    assert torch.equal(torch.stack(got, -1), lm_io["gen_out"][1, :, :20])


def test_bfloat16_generation_runs(lm_io):
    """The default load dtype (bf16, as the published 7B) generates valid tokens; exactness is an fp32 property."""
    from helpers import LM_SMALL, LM_SMALL_CONFIG

    from duplex.model.lm import MoshiLM

    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG)
    assert lm.dtype == torch.bfloat16
    gen = lm.generator(2, seed=1)
    out = torch.stack([gen.step(lm_io["gen_user_tokens"][:, :, s]) for s in range(20)], -1)
    assert (out[:, :, 0] == -2).all()
    assert (out[:, 0, 1:] >= 0).all() and (out[:, 0, 1:] < 100).all()
    assert (out[:, 1:, 1:] >= 0).all() and (out[:, 1:, 1:] < 64).all()
