"""On CUDA the codec and the LM reproduce the reference vectors too, and CUDA graphs equal eager with plain and
quantized weights and the fp8 KV ring (skipped without a GPU; the comparison's CPU twin runs everywhere)."""

import pytest
import torch
from helpers import LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from codec import Mimi

FP8 = torch.float8_e4m3fn
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def no_tf32():
    """Exact float32 (TF32 convolutions and matmuls would round inputs to 10-bit mantissas)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@needs_cuda
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


@pytest.mark.gpu
@needs_cuda
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


@pytest.mark.gpu
@needs_cuda
def test_cuda_sampling_matches_cpu_sampling():
    """The counter-based random source gives the same draws on any device."""
    from duplex.model.sampling import step_key, uniform_noise

    seed, step = torch.arange(4), torch.tensor([0, 3, 10, 1000])
    cpu = uniform_noise(step_key(seed, step), 2, 250)
    gpu = uniform_noise(step_key(seed.cuda(), step.cuda()), 2, 250).cpu()
    assert torch.equal(cpu, gpu)


def _engine(cuda_graphs, greedy, **quantized):
    from helpers import make_engine

    return make_engine(4, greedy=greedy, device="cuda", cuda_graphs=cuda_graphs, **quantized)


def _same_tokens_and_audio(a, b, ticks=40, atol=1e-4):
    """Step engines ``a`` and ``b`` on the same inputs (three sessions that skip ticks); every tick their tokens
    are identical and their audio equal within ``atol``."""
    import numpy as np

    slots_a = [a.open(seed=i) for i in range(3)]
    slots_b = [b.open(seed=i) for i in range(3)]
    rng = np.random.default_rng(0)
    for tick in range(ticks):
        x = (0.1 * rng.standard_normal((3, a.frame_size))).astype(np.float32)
        active = [i for i in range(3) if (tick + i) % 4 != 0]  # slots skip ticks
        out_a = a.step({slots_a[i]: x[i] for i in active})
        out_b = b.step({slots_b[i]: x[i] for i in active})
        assert torch.equal(a.last_tokens[:3][active], b.last_tokens[:3][active]), f"tick {tick}"
        for i in active:
            np.testing.assert_allclose(out_a[slots_a[i]][0], out_b[slots_b[i]][0], atol=atol)


QUANTIZED = [{"quantize": "int8"}, {"quantize": "fp8"}, {"kv_dtype": FP8}, {"quantize": "int8", "kv_dtype": FP8}]
QUANTIZED_IDS = ["int8", "fp8", "fp8-ring", "int8+fp8-ring"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("greedy", [True, False])
def test_cuda_graphs_equal_eager(no_tf32, greedy):
    """Captured and eager frame steps give identical tokens (the random source is a pure function of each slot's
    seed and position, so this holds with sampling too) and the same audio."""
    eager, graphed = _engine(False, greedy), _engine(True, greedy)
    _same_tokens_and_audio(eager, graphed)
    assert graphed.cuda_graphs and graphed._graphs is not None  # really captured


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("quantized", QUANTIZED, ids=QUANTIZED_IDS)
def test_cuda_graphs_equal_eager_quantized(no_tf32, quantized):
    """With int8 or fp8 weights and with the fp8 KV ring (the small fixture model, float32 activations), the
    captured step gives the eager step's tokens under greedy decoding and its audio."""
    eager, graphed = _engine(False, True, **quantized), _engine(True, True, **quantized)
    assert eager.quantization == graphed.quantization
    _same_tokens_and_audio(eager, graphed)
    assert graphed.cuda_graphs and graphed._graphs is not None  # really captured, not the eager fallback


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("quantize", ["int8", "fp8"])
def test_cuda_graphs_equal_eager_shipped_model_bfloat16(no_tf32, quantize):
    """The shipped model as a GPU runs it (bfloat16, widths that PyTorch's int8 kernel takes), quantized, with the
    fp8 ring: graphs and eager give identical tokens."""
    from duplex.runtime.engine import Engine, SamplingOptions

    def engine(cuda_graphs):
        return Engine.default(slots=4, device="cuda", cuda_graphs=cuda_graphs, quantize=quantize, kv_dtype=FP8,
                              sampling=SamplingOptions(greedy=True))

    eager, graphed = engine(False), engine(True)
    assert graphed.quantization == {"weights": quantize, "kv": "fp8", "compute": "bfloat16"}
    _same_tokens_and_audio(eager, graphed, ticks=30)
    assert graphed.cuda_graphs and graphed._graphs is not None


@pytest.mark.parametrize("quantized", QUANTIZED, ids=QUANTIZED_IDS)
def test_the_comparison_on_cpu(quantized):
    """The CPU twin of the comparisons above (no CUDA graphs there): two eager engines with the same quantized
    weights and ring give identical tokens and audio tick by tick, which graphs = eager builds on."""
    from helpers import make_engine

    a, b = (make_engine(4, greedy=True, **quantized) for _ in range(2))
    _same_tokens_and_audio(a, b, ticks=12, atol=0)


@pytest.mark.gpu
@needs_cuda
def test_graph_capture_can_be_disabled(monkeypatch):
    monkeypatch.setenv("DUPLEX_NO_CUDA_GRAPHS", "1")
    assert not _engine(True, True).cuda_graphs
