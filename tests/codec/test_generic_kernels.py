"""The arithmetic GPUs run, checked on CPU: inside ``generic_kernels()`` the codec and the LM use the generic
PyTorch operators that every non-CPU device uses (``F.conv1d``, ``F.conv_transpose1d``, ``F.elu``, ``F.linear``,
fused attention with a boolean ring mask) instead of the CPU fast paths, and must still reproduce Kyutai's
reference vectors. Only the kernels themselves and CUDA-graph capture are left to tests/test_gpu.py."""

import numpy as np
import pytest
import torch

from codec.modules.cpu_paths import cpu_fast_path, generic_kernels
from codec.modules.transformer import ring_step_tables


def test_switch_routes_every_fast_path_to_the_generic_operators(small_mimi, monkeypatch):
    import torch.nn.functional as F

    calls = {}
    for name in ("conv1d", "conv_transpose1d", "elu", "linear", "fold"):
        original = getattr(F, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(F, name, counted)
    stream = small_mimi.stream(1)
    with torch.no_grad():
        stream.encode(torch.zeros(1, 1, 1920))
        stream.decode(torch.zeros(1, 8, 1, dtype=torch.long))
        fast, calls = calls, {}
        with generic_kernels():
            stream.encode(torch.zeros(1, 1, 1920))
            stream.decode(torch.zeros(1, 8, 1, dtype=torch.long))
    assert "elu" not in fast and "linear" not in fast
    assert calls.get("elu") and calls.get("linear") and "fold" not in calls
    # the few-step convolutions were matrix products, and so were the transposed ones (but the grouped upsample)
    assert calls["conv1d"] > fast.get("conv1d", 0)
    assert calls["conv_transpose1d"] > fast.get("conv_transpose1d", 0)


def test_switch_is_scoped_and_restores():
    x = torch.zeros(1)
    assert cpu_fast_path(x)
    with generic_kernels():
        assert not cpu_fast_path(x)
        with generic_kernels():
            assert not cpu_fast_path(x)
        assert not cpu_fast_path(x)
        # the accelerator form of the ring mask: boolean, for the fused attention kernels
        assert ring_step_tables(torch.zeros(2, dtype=torch.long), 1, 8, 8, 2, 4, None, None).mask.dtype == torch.bool
    assert cpu_fast_path(x)
    assert ring_step_tables(torch.zeros(2, dtype=torch.long), 1, 8, 8, 2, 4, None, None).mask.dtype == torch.float32


def test_codec_offline_and_streaming_match_reference(small_mimi, mimi_io):
    with generic_kernels():
        assert torch.equal(small_mimi.encode(mimi_io["pcm"]), mimi_io["codes_batch_nq8"])
        torch.testing.assert_close(small_mimi.decode(mimi_io["codes_batch_nq8"]), mimi_io["decoded_batch_nq8"],
                                   atol=1e-4, rtol=0)
        stream = small_mimi.stream(1)
        codes = stream.encode(mimi_io["long_pcm"])
        assert torch.equal(codes, mimi_io["long_codes_stream_nq8"])
        torch.testing.assert_close(stream.decode(codes), mimi_io["long_decoded_stream_nq8"], atol=1e-4, rtol=0)


def test_lm_forward_and_greedy_generation_match_reference(small_lm, lm_io):
    with generic_kernels():
        out = small_lm.forward_train(lm_io["codes"][:, :, :12])
        assert torch.equal(out.mask, lm_io["fwd_mask"])
        torch.testing.assert_close(out.logits[out.mask], lm_io["fwd_logits"][lm_io["fwd_mask"]], atol=1e-4, rtol=0)
        gen = small_lm.generator(2, greedy=True)  # 40 steps, context 16: the ring wraps
        tokens = torch.stack([gen.step(lm_io["gen_user_tokens"][:, :, s]) for s in range(40)], -1)
    assert torch.equal(tokens, lm_io["gen_out"])


@pytest.mark.parametrize("greedy", [True, False])
def test_engine_generic_equals_fast_paths(small_lm, small_mimi, greedy):
    """The whole frame step (as the GPU engine runs it, minus capture) gives the CPU engine's tokens, with slots
    skipping ticks; audio agrees to float rounding."""
    from duplex.runtime.engine import Engine, SamplingOptions

    engines = [Engine(small_lm, small_mimi, slots=4, sampling=SamplingOptions(greedy=greedy)) for _ in range(2)]
    slots = [[engine.open(seed=i) for i in range(3)] for engine in engines]
    rng = np.random.default_rng(0)
    for tick in range(30):
        x = (0.1 * rng.standard_normal((3, 1920))).astype(np.float32)
        active = [i for i in range(3) if (tick + i) % 4 != 0]
        fast = engines[0].step({slots[0][i]: x[i] for i in active})
        with generic_kernels():
            generic = engines[1].step({slots[1][i]: x[i] for i in active})
        assert torch.equal(engines[0].last_tokens, engines[1].last_tokens)
        for i in active:
            np.testing.assert_allclose(fast[slots[0][i]][0], generic[slots[1][i]][0], atol=1e-4)
