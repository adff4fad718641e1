"""The CPU inference weight layout: wide weights re-laid column-major in place, same values, same results."""

import torch
from helpers import LM_SMALL, LM_SMALL_CONFIG
from safetensors.torch import load_file, save_file

from codec.modules.linear import fast_linear, own_kernels_for, use_wide_weight_layout
from duplex.model.lm import MoshiLM


def _column_major(w: torch.Tensor) -> bool:
    return w.stride() == (1, w.shape[0])


def test_only_wide_float32_weights_are_relaid_in_place():
    wide, square, narrow = torch.randn(96, 16), torch.randn(16, 16), torch.randn(8, 32)
    half = torch.randn(64, 16).half()
    param = torch.nn.Parameter(torch.randn(40, 20))
    before = [t.clone() for t in (wide, square, narrow, half, param)]
    assert use_wide_weight_layout([wide, square, narrow, half, param]) == 2
    assert _column_major(wide) and _column_major(param)
    assert square.is_contiguous() and narrow.is_contiguous() and half.is_contiguous()
    for t, b in zip((wide, square, narrow, half, param), before):
        assert torch.equal(t, b)
    assert isinstance(param, torch.nn.Parameter)
    assert use_wide_weight_layout([wide, param]) == 0  # idempotent
    x = torch.randn(3, 16)
    torch.testing.assert_close(fast_linear(x, wide), x @ before[0].T)


def test_lm_generator_switches_layout_and_results_do_not_change(lm_io, tmp_path):
    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32)
    codes = lm_io["codes"][:, :, :12]
    reference = lm.forward_train(codes)
    assert lm.text_linear.weight.is_contiguous()

    lm.train()
    lm.prepare_for_inference()  # training keeps the plain layout
    assert lm.text_linear.weight.is_contiguous()
    lm.eval()

    gen = lm.generator(1, greedy=True)
    relaid = [lm.text_linear.weight, lm.linears[0].weight, lm.layers[0].gating.linear_in.weight,
              lm.layers[0].self_attn.in_proj_weight]
    # Column-major: the wide weights for oneDNN; only the text head where our own one-row kernel, which reads
    # row-major weights, is loaded (codec.kernels).
    expected = [w.shape[0] >= 2 * w.shape[1] and (w is lm.text_linear.weight or not own_kernels_for(w))
                for w in relaid]
    assert [_column_major(w) for w in relaid] == expected
    assert lm.emb[0].weight.is_contiguous() and lm.text_emb.weight.is_contiguous()  # tables read by row

    after = lm.forward_train(codes)
    torch.testing.assert_close(after.logits[after.mask], reference.logits[reference.mask], atol=1e-5, rtol=0)
    tokens = torch.stack([gen.step(lm_io["gen_user_tokens"][:1, :, s]) for s in range(40)], -1)
    assert torch.equal(tokens, lm_io["gen_out"][:1])

    # state_dict() gives the re-laid weights back contiguous: it saves as it is, with the file's bytes, and the
    # live weights keep their inference layout.
    path = tmp_path / "lm.safetensors"
    save_file(lm.state_dict(), str(path))
    assert [_column_major(w) for w in relaid] == expected
    original = load_file(str(LM_SMALL))
    reloaded = load_file(str(path))
    for name, value in original.items():
        assert torch.equal(reloaded[name], value), name


def test_an_engine_leaves_the_lm_saveable_and_the_codec_as_it_was(tmp_path):
    """Building an engine prepares the LM for inference (documented) but leaves state_dict() saveable, and it
    does not change the caller's codec (its codebook count is the engine's own)."""
    from helpers import MIMI_SMALL, MIMI_SMALL_CONFIG

    from codec import Mimi
    from duplex.runtime.engine import Engine

    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32)
    mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG, num_codebooks=3)
    engine = Engine(lm, mimi, slots=1)
    assert mimi.num_codebooks == 3 and engine.num_codebooks == max(lm.config.dep_q, lm.config.user_codebooks)
    save_file(lm.state_dict(), str(tmp_path / "lm.safetensors"))  # raised "non contiguous tensor" before
    slot = engine.open()
    assert engine.step({slot: torch.zeros(1920).numpy()})[slot][0].shape == (1920,)
