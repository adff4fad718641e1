"""Bit-exactness against reference vectors produced by Kyutai's implementation (moshi 0.2.13, CPU, float32)."""

import pytest
import torch

PCM_TOL = 1e-4


def test_offline_latent_matches_reference(small_mimi, mimi_io):
    latent = small_mimi.encode_latent(mimi_io["pcm"])
    torch.testing.assert_close(latent, mimi_io["latent_unquantized"], atol=PCM_TOL, rtol=0)


@pytest.mark.parametrize("nq", [8, 32])
def test_offline_codes_identical(small_mimi, mimi_io, nq):
    small_mimi.num_codebooks = nq
    try:
        codes = small_mimi.encode(mimi_io["pcm"])
    finally:
        small_mimi.num_codebooks = 8
    assert codes.dtype == torch.int64
    assert torch.equal(codes, mimi_io[f"codes_batch_nq{nq}"])


@pytest.mark.parametrize("nq", [8, 32])
def test_offline_decode_within_tolerance(small_mimi, mimi_io, nq):
    pcm = small_mimi.decode(mimi_io[f"codes_batch_nq{nq}"])
    assert pcm.shape == (2, 1, 23040)
    torch.testing.assert_close(pcm, mimi_io[f"decoded_batch_nq{nq}"], atol=PCM_TOL, rtol=0)


@pytest.mark.parametrize("row", [0, 1])
def test_offline_batch_of_one_matches_its_row(small_mimi, mimi_io, row):
    codes = small_mimi.encode(mimi_io["pcm"][row:row + 1])
    assert torch.equal(codes, mimi_io["codes_batch_nq8"][row:row + 1])
    pcm = small_mimi.decode(mimi_io["codes_batch_nq8"][row:row + 1])
    torch.testing.assert_close(pcm, mimi_io["decoded_batch_nq8"][row:row + 1], atol=PCM_TOL, rtol=0)


def test_streaming_codes_identical_one_frame_per_call(small_mimi, mimi_io):
    stream = small_mimi.stream(2)
    codes = torch.cat([stream.encode(f) for f in mimi_io["pcm"].split(1920, dim=-1)], dim=-1)
    assert torch.equal(codes, mimi_io["codes_stream_nq8"])


def test_streaming_decode_within_tolerance(small_mimi, mimi_io):
    stream = small_mimi.stream(2)
    pcm = torch.cat([stream.decode(c) for c in mimi_io["codes_batch_nq8"].split(1, dim=-1)], dim=-1)
    torch.testing.assert_close(pcm, mimi_io["decoded_stream_nq8"], atol=PCM_TOL, rtol=0)


@pytest.mark.parametrize("row", [0, 1])
def test_streaming_batch_of_one(small_mimi, mimi_io, row):
    stream = small_mimi.stream(1)
    codes = stream.encode(mimi_io["pcm"][row:row + 1])
    assert torch.equal(codes, mimi_io["codes_stream_nq8"][row:row + 1])
    pcm = stream.decode(mimi_io["codes_batch_nq8"][row:row + 1])
    torch.testing.assert_close(pcm, mimi_io["decoded_stream_nq8"][row:row + 1], atol=PCM_TOL, rtol=0)


def test_long_stream_past_the_attention_window(small_mimi, mimi_io):
    """140 frames: past frame 125 official streaming differs from offline (ring of 250, chunks of 2)."""
    stream = small_mimi.stream(1)
    codes = stream.encode(mimi_io["long_pcm"])
    assert torch.equal(codes, mimi_io["long_codes_stream_nq8"])
    pcm = stream.decode(codes)
    torch.testing.assert_close(pcm, mimi_io["long_decoded_stream_nq8"], atol=PCM_TOL, rtol=0)


def test_long_offline_codes_identical(small_mimi, mimi_io):
    codes = small_mimi.encode(mimi_io["long_pcm"])
    assert torch.equal(codes, mimi_io["long_codes_batch_nq8"])


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_offline_chunking_does_not_change_results(small_mimi, mimi_io, chunk):
    saved = small_mimi.offline_chunk_frames
    small_mimi.offline_chunk_frames = chunk
    try:
        assert torch.equal(small_mimi.encode(mimi_io["long_pcm"]), mimi_io["long_codes_batch_nq8"])
        pcm = small_mimi.decode(mimi_io["codes_batch_nq8"])
    finally:
        small_mimi.offline_chunk_frames = saved
    torch.testing.assert_close(pcm, mimi_io["decoded_batch_nq8"], atol=PCM_TOL, rtol=0)
