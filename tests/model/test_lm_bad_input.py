"""Bad input to the LM gets a clear error that names the problem."""

import pytest
import torch


def test_forward_train_codes(small_lm):
    good = torch.zeros(1, 17, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"expected 17 streams \(1 text \+ 16 audio\), got 16"):
        small_lm.forward_train(good[:, :16])
    with pytest.raises(ValueError, match="rank 2"):
        small_lm.forward_train(good[0])
    bad = good.clone()
    bad[0, 0, 1] = 100
    with pytest.raises(ValueError, match=r"text tokens \(stream 0\) must be in \[-1, 100\)"):
        small_lm.forward_train(bad)
    bad = good.clone()
    bad[0, 5, 2] = 64
    with pytest.raises(ValueError, match=r"audio codes \(streams 1..\) must be in \[-1, 64\)"):
        small_lm.forward_train(bad)
    with pytest.raises(TypeError, match="integer"):
        small_lm.forward_train(good.float())


def test_zero_token_is_accepted_and_masked(small_lm):
    codes = torch.zeros(1, 17, 4, dtype=torch.long)
    codes[0, 3, 1] = -1
    out = small_lm.forward_train(codes)
    assert not out.mask[0, 2, 1]


def test_generator_step_input(small_lm):
    gen = small_lm.generator(2, greedy=True)
    ok = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="this generator has 2 slots but the user codes have batch size 3"):
        gen.step(torch.zeros(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="expected the user's 8 codebooks per slot, got 7"):
        gen.step(ok[:, :7])
    bad = ok.clone()
    bad[1, 2] = 64
    with pytest.raises(ValueError, match=r"user codes must be in \[0, 64\)"):
        gen.step(bad)
    bad[1, 2] = -1
    with pytest.raises(ValueError, match="out of range"):
        gen.step(bad)
    assert gen.step(ok[..., None]).shape == (2, 9)  # [B, 8, 1] as Mimi returns it is fine


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 1, "top_k": -1}, "top_k"),
    ({"batch_size": 1, "temperature": float("nan")}, "temperature"),
    ({"batch_size": 1, "text_temperature": -0.5}, "text_temperature"),
])
def test_generator_arguments(small_lm, kwargs, words):
    with pytest.raises(ValueError, match=words):
        small_lm.generator(**kwargs)


def test_reset_mask_checked(small_lm):
    gen = small_lm.generator(2)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        gen.reset(torch.tensor([True]))
