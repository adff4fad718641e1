"""On CUDA the codec and the LM reproduce the reference vectors too (skipped without a GPU)."""

import pytest
import torch
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from codec import Mimi

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
    from duplex.model.lm import MoshiLM

    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, device="cuda", dtype=torch.float32)
    out = lm.forward_train(lm_io["codes"][:, :, :12].cuda())
    assert torch.equal(out.mask.cpu(), lm_io["fwd_mask"])
    torch.testing.assert_close(out.logits.cpu()[out.mask.cpu()], lm_io["fwd_logits"][lm_io["fwd_mask"]],
                               atol=1e-4, rtol=0)
    gen = lm.generator(2, greedy=True)
    tokens = torch.stack([gen.step(lm_io["gen_user_tokens"][:, :, s].cuda()) for s in range(40)], -1).cpu()
    assert torch.equal(tokens, lm_io["gen_out"])


def test_cuda_sampling_matches_cpu_sampling():
    """The counter-based random source gives the same draws on any device."""
    from duplex.model.sampling import step_key, uniform_noise

    seed, step = torch.arange(4), torch.tensor([0, 3, 10, 1000])
    cpu = uniform_noise(step_key(seed, step), 2, 250)
    gpu = uniform_noise(step_key(seed.cuda(), step.cuda()), 2, 250).cpu()
    assert torch.equal(cpu, gpu)


def _engine(cuda_graphs, greedy):
    from helpers import make_engine

    return make_engine(4, greedy=greedy, device="cuda", cuda_graphs=cuda_graphs)


@pytest.mark.parametrize("greedy", [True, False])
def test_cuda_graphs_equal_eager(no_tf32, greedy):
    """Captured and eager frame steps give identical tokens (the random source is a pure function of each slot's
    seed and position, so this holds with sampling too) and the same audio."""
    import numpy as np

    eager, graphed = _engine(False, greedy), _engine(True, greedy)
    slots_e = [eager.open(seed=i) for i in range(3)]
    slots_g = [graphed.open(seed=i) for i in range(3)]
    rng = np.random.default_rng(0)
    for tick in range(40):
        x = (0.1 * rng.standard_normal((3, 1920))).astype(np.float32)
        active = [i for i in range(3) if (tick + i) % 4 != 0]  # slots skip ticks
        out_e = eager.step({slots_e[i]: x[i] for i in active})
        out_g = graphed.step({slots_g[i]: x[i] for i in active})
        assert torch.equal(eager.last_tokens[:3][active], graphed.last_tokens[:3][active])
        for i in active:
            np.testing.assert_allclose(out_e[slots_e[i]][0], out_g[slots_g[i]][0], atol=1e-4)
    assert graphed.cuda_graphs and graphed._graphs is not None  # really captured


def test_graph_capture_can_be_disabled(monkeypatch):
    monkeypatch.setenv("DUPLEX_NO_CUDA_GRAPHS", "1")
    assert not _engine(True, True).cuda_graphs
