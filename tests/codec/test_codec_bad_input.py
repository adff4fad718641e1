"""Bad input gets a clear error that names the problem."""

import numpy as np
import pytest
import torch


def test_encode_rank_and_channels(small_mimi):
    with pytest.raises(ValueError, match=r"shape \[batch, 1, samples\], got rank 2"):
        small_mimi.encode(torch.zeros(1, 1920))
    with pytest.raises(ValueError, match="mono .* got 2 channels"):
        small_mimi.encode(torch.zeros(1, 2, 1920))
    with pytest.raises(ValueError, match="empty"):
        small_mimi.encode(torch.zeros(1, 1, 0))
    with pytest.raises(TypeError, match="floating point"):
        small_mimi.encode(torch.zeros(1, 1, 1920, dtype=torch.int16))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        small_mimi.encode([0.0] * 1920)


def test_numpy_input_is_accepted(small_mimi):
    assert small_mimi.encode(np.zeros((1, 1, 1920), dtype=np.float32)).shape == (1, 8, 1)


def test_offline_pads_partial_frames(small_mimi):
    assert small_mimi.encode(torch.zeros(1, 1, 1921)).shape == (1, 8, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples(small_mimi, bad):
    pcm = torch.zeros(1, 1, 3840)
    pcm[0, 0, 100] = bad
    with pytest.raises(ValueError, match="1 non-finite sample"):
        small_mimi.encode(pcm)
    with pytest.raises(ValueError, match="non-finite"):
        small_mimi.stream(1).encode(pcm)


def test_streaming_needs_whole_frames(small_mimi):
    with pytest.raises(ValueError, match=r"whole number of 1920-sample frames, got 2000 samples"):
        small_mimi.stream(1).encode(torch.zeros(1, 1, 2000))


def test_stream_batch_size_is_checked(small_mimi):
    stream = small_mimi.stream(2)
    with pytest.raises(ValueError, match="this stream has 2 slots but the audio has batch size 3"):
        stream.encode(torch.zeros(3, 1, 1920))
    with pytest.raises(ValueError, match="this stream has 2 slots but the codes have batch size 1"):
        stream.decode(torch.zeros(1, 8, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"reset mask must have shape \[2\]"):
        stream.reset(torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="bool"):
        stream.reset(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="positive integer"):
        small_mimi.stream(0)


@pytest.mark.parametrize("value", [-1, 64, 10_000])
def test_codes_out_of_range(small_mimi, value):
    codes = torch.zeros(1, 8, 3, dtype=torch.long)
    codes[0, 3, 1] = value
    with pytest.raises(ValueError, match=r"codes must be in \[0, 64\); found 1 out of range"):
        small_mimi.decode(codes)
    with pytest.raises(ValueError, match="out of range"):
        small_mimi.stream(1).decode(codes)


def test_codes_shape_and_dtype(small_mimi):
    with pytest.raises(TypeError, match="integer"):
        small_mimi.decode(torch.zeros(1, 8, 2))
    with pytest.raises(ValueError, match=r"\[batch, codebooks, frames\], got rank 2"):
        small_mimi.decode(torch.zeros(8, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="got 33 codebooks, this codec has between 1 and 32"):
        small_mimi.decode(torch.zeros(1, 33, 2, dtype=torch.long))


def test_fewer_codebooks_decode(small_mimi):
    """Any number of codebook rows up to 32 decodes (the rows present are used)."""
    assert small_mimi.decode(torch.zeros(1, 3, 2, dtype=torch.long)).shape == (1, 1, 3840)


@pytest.mark.parametrize("n", [0, 33, 2.5, True])
def test_num_codebooks_range(small_mimi, n):
    with pytest.raises(ValueError, match=r"num_codebooks must be an integer in \[1, 32\]"):
        small_mimi.num_codebooks = n
