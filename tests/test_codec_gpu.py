"""The codec on CUDA reproduces the reference vectors too (skipped without a GPU)."""

import pytest
import torch

from codec import Mimi
from conftest import MIMI_SMALL, MIMI_SMALL_CONFIG

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
