"""On CUDA the codec and the LM reproduce the reference vectors too (skipped without a GPU)."""

import pytest
import torch

from codec import Mimi
from conftest import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def no_tf32():
    """Exact float32 (TF32 convolutions and matmuls would round inputs to 10-bit mantissas)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_cuda_offline_and_streaming_match_reference(mimi_io, no_tf32):
    model = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG, device="cuda")
    pcm = mimi_io["pcm"].cuda()
    assert torch.equal(model.encode(pcm).cpu(), mimi_io["codes_batch_nq8"])
    decoded = model.decode(mimi_io["codes_batch_nq8"].cuda()).cpu()
    torch.testing.assert_close(decoded, mimi_io["decoded_batch_nq8"], atol=1e-4, rtol=0)
    stream = model.stream(1)
    codes = stream.encode(mimi_io["long_pcm"].cuda()).cpu()
    assert torch.equal(codes, mimi_io["long_codes_stream_nq8"])
    torch.testing.assert_close(stream.decode(codes.cuda()).cpu(), mimi_io["long_decoded_stream_nq8"],
                               atol=1e-4, rtol=0)


def test_cuda_lm_forward_and_greedy_generation_match_reference(lm_io, no_tf32):
    from duplex.lm import MoshiLM

    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, device="cuda", dtype=torch.float32)
    out = lm.forward_train(lm_io["codes"][:, :, :12].cuda())
    assert torch.equal(out.mask.cpu(), lm_io["fwd_mask"])
    torch.testing.assert_close(out.logits.cpu()[out.mask.cpu()], lm_io["fwd_logits"][lm_io["fwd_mask"]],
                               atol=1e-4, rtol=0)
    gen = lm.generator(2, greedy=True)
    tokens = torch.stack([gen.step(lm_io["gen_user_tokens"][:, :, s].cuda()) for s in range(40)], -1).cpu()
    assert torch.equal(tokens, lm_io["gen_out"])


def test_cuda_sampling_matches_cpu_sampling(small_lm, lm_io):
    """The counter-based random source gives the same draws on any device."""
    from duplex.sampling import step_key, uniform_noise

    seed, step = torch.arange(4), torch.tensor([0, 3, 10, 1000])
    cpu = uniform_noise(step_key(seed, step), 2, 250)
    gpu = uniform_noise(step_key(seed.cuda(), step.cuda()), 2, 250).cpu()
    assert torch.equal(cpu, gpu)
