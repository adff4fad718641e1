"""Streaming behaviour on fresh random inputs: equal to offline, causal, per-slot reset, independent states."""

import copy

import pytest
import torch
from helpers import MIMI_SMALL_CONFIG

from codec import Mimi, MimiConfig
from codec.modules.transformer import MimiTransformer


@pytest.fixture(scope="module")
def model():
    """A random small codec (not the reference weights), so these checks see values nobody tuned for."""
    return Mimi.random(str(MIMI_SMALL_CONFIG), seed=7)


def stream_encode(model, pcm, batch=None):
    stream = model.stream(batch or pcm.shape[0])
    return torch.cat([stream.encode(f) for f in pcm.split(model.frame_size, dim=-1)], dim=-1)


def test_streaming_equals_offline(model, speechlike):
    pcm = speechlike(3, 20, seed=1)
    codes = model.encode(pcm)
    assert torch.equal(stream_encode(model, pcm), codes)
    stream = model.stream(3)
    streamed = torch.cat([stream.decode(c) for c in codes.split(1, dim=-1)], dim=-1)
    torch.testing.assert_close(streamed, model.decode(codes), atol=1e-5, rtol=0)


def test_multi_frame_calls_equal_frame_by_frame(model, speechlike):
    pcm = speechlike(2, 9, seed=2)
    stream = model.stream(2)
    chunked = torch.cat([stream.encode(pcm[..., :4 * 1920]), stream.encode(pcm[..., 4 * 1920:])], dim=-1)
    assert torch.equal(chunked, stream_encode(model, pcm))
    codes = model.encode(pcm)
    a, b = model.stream(2), model.stream(2)
    one_call = a.decode(codes)
    per_frame = torch.cat([b.decode(c) for c in codes.split(1, dim=-1)], dim=-1)
    assert torch.equal(one_call, per_frame)


def test_causal_future_audio_never_changes_past_codes(model, speechlike):
    pcm = speechlike(1, 12, seed=3)
    prefix = model.encode(pcm[..., :6 * 1920])
    assert torch.equal(model.encode(pcm)[..., :6], prefix)


def test_reset_one_row_leaves_other_rows_bit_identical(model, speechlike):
    pcm = speechlike(3, 10, seed=4)
    other = speechlike(3, 10, seed=5)
    reference = model.stream(3)
    ref_codes, ref_audio = [], []
    for f in pcm.split(1920, dim=-1):
        c = reference.encode(f)
        ref_codes.append(c)
        ref_audio.append(reference.decode(c))

    stream = model.stream(3)
    mixed = pcm.clone()
    mixed[1] = other[1]  # row 1 sees different audio, then is reset half way
    codes, audio = [], []
    for i, f in enumerate(mixed.split(1920, dim=-1)):
        if i == 5:
            stream.reset(torch.tensor([False, True, False]))
        c = stream.encode(f)
        codes.append(c)
        audio.append(stream.decode(c))
    codes, audio = torch.cat(codes, -1), torch.cat(audio, -1)
    ref_codes, ref_audio = torch.cat(ref_codes, -1), torch.cat(ref_audio, -1)
    for row in (0, 2):
        assert torch.equal(codes[row], ref_codes[row])
        assert torch.equal(audio[row], ref_audio[row])
    # The reset row restarts from scratch: equal to a fresh stream fed the frames after the reset.
    fresh = model.stream(3)
    tail = mixed[..., 5 * 1920:]
    fresh_codes = torch.cat([fresh.encode(f) for f in tail.split(1920, dim=-1)], dim=-1)
    assert torch.equal(codes[1, :, 5:], fresh_codes[1])


def test_reset_all_restarts_every_row(model, speechlike):
    pcm = speechlike(2, 6, seed=6)
    stream = model.stream(2)
    first = stream.encode(pcm)
    stream.reset()
    assert torch.equal(stream.encode(pcm), first)


def test_two_streams_of_one_model_do_not_interfere(model, speechlike):
    a_pcm, b_pcm = speechlike(1, 8, seed=8), speechlike(2, 8, seed=9)
    a, b = model.stream(1), model.stream(2)
    a_codes, b_codes = [], []
    for fa, fb in zip(a_pcm.split(1920, -1), b_pcm.split(1920, -1)):  # interleaved use
        a_codes.append(a.encode(fa))
        b_codes.append(b.encode(fb))
    assert torch.equal(torch.cat(a_codes, -1), stream_encode(model, a_pcm))
    assert torch.equal(torch.cat(b_codes, -1), stream_encode(model, b_pcm))


def test_inactive_rows_keep_their_state(model, speechlike):
    pcm = speechlike(2, 6, seed=10)
    frames = pcm.split(1920, dim=-1)
    stream = model.stream(2)
    codes = [stream.encode(frames[0])]
    # Frame 1 is only for row 0: row 1 computes something but must not advance.
    stream.encode(torch.randn(2, 1, 1920) * 0.1, active=torch.tensor([False, True]))[1]
    skipped = stream.encode(frames[1], active=torch.tensor([True, False]))
    codes.append(skipped)
    codes += [stream.encode(f) for f in frames[2:]]
    expected = stream_encode(model, pcm)
    assert torch.equal(torch.cat(codes, -1)[0], expected[0])


def test_inactive_rows_skip_frames(model, speechlike):
    """A row that has no input in a tick continues later as if that tick never happened."""
    pcm = speechlike(2, 6, seed=11)
    frames = pcm.split(1920, dim=-1)
    stream = model.stream(2)
    out = []
    for i, f in enumerate(frames):
        out.append(stream.encode(f, active=torch.tensor([True, i != 2]))[1:])
        if i == 2:  # row 1 gets frame 2 one tick late
            out[-1] = stream.encode(f, active=torch.tensor([False, True]))[1:]
    assert torch.equal(torch.cat(out, -1)[0], stream_encode(model, pcm[1:])[0])


def test_state_is_preallocated_and_reset_in_place(model):
    stream = model.stream(2)
    from codec.modules.state import leaves

    before = [t.data_ptr() for t in leaves(stream.encoder_state)]
    stream.encode(torch.zeros(2, 1, 1920))
    stream.reset(torch.tensor([True, False]))
    stream.encode(torch.zeros(2, 1, 1920))
    assert [t.data_ptr() for t in leaves(stream.encoder_state)] == before


def _transformer(context):
    cfg = copy.deepcopy(MimiConfig.load(str(MIMI_SMALL_CONFIG)).transformer)
    # One layer with LayerScale 1, so attention differences show and do not propagate through later layers.
    cfg.context, cfg.layer_scale, cfg.num_layers = context, 1.0, 1
    torch.manual_seed(0)
    tr = MimiTransformer(cfg)
    with torch.no_grad():
        for p in tr.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return tr.eval()


@torch.no_grad()
def test_official_ring_semantics_past_the_window():
    """Chunks of 2 on a ring of exactly `context` slots: equal to offline until the ring first wraps, then the
    first query of each chunk sees one key fewer (spec 1.6); a ring with spare room stays equal to offline."""
    context = 10
    tr = _transformer(context)
    x = torch.randn(1, tr.cfg.d_model, 30)
    offline = tr(x)
    ring = tr.new_state(1, 2)
    streamed = torch.cat([tr.step(c, ring) for c in x.split(2, dim=-1)], dim=-1)
    torch.testing.assert_close(streamed[..., :context], offline[..., :context], atol=1e-5, rtol=0)
    # Step `context` is the first query of a chunk whose oldest visible key was just overwritten.
    assert (streamed[..., context] - offline[..., context]).abs().max() > 1e-3
    # Second queries of chunks still see the full window.
    torch.testing.assert_close(streamed[..., context + 1::2], offline[..., context + 1::2], atol=1e-5, rtol=0)

    wide = tr.new_state(1, 2, offline_window=True)
    streamed_wide = torch.cat([tr.step(c, wide) for c in x.split(2, dim=-1)], dim=-1)
    torch.testing.assert_close(streamed_wide, offline, atol=1e-5, rtol=0)


def test_the_codebook_count_is_the_calls_or_the_streams_never_a_change_to_the_model(small_mimi, speechlike):
    x = speechlike(2, 3)
    before = small_mimi.num_codebooks
    assert small_mimi.encode(x, 3).shape[1] == 3 and small_mimi.num_codebooks == before
    stream = small_mimi.stream(2, num_codebooks=2)
    assert stream.encode(x).shape == (2, 2, 3) and small_mimi.num_codebooks == before
    assert small_mimi.stream(2).encode(x).shape[1] == before  # a stream's own count, taken when it is made
    assert torch.equal(small_mimi.encode(x, 2), small_mimi.encode(x)[:, :2])  # the first codebooks are the same
    with pytest.raises(ValueError, match="num_codebooks must be an integer in"):
        small_mimi.encode(x, 0)


def test_a_random_codec_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Mimi.random(MIMI_SMALL_CONFIG, seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kernel,stride", [(16, 8), (8, 4), (10, 5), (4, 2), (7, 3), (12, 4)])
@pytest.mark.parametrize("batch,steps", [(1, 1), (1, 2), (3, 5), (8, 17)])
def test_transposed_convolution_fast_path_is_fold_bit_for_bit(kernel, stride, batch, steps):
    """The CPU path of StreamingConvTranspose1d: for SEANet's kernels (twice the stride) it sums each output's two
    contributions itself instead of F.fold; the sums are fold's bit for bit, and both are the transposed
    convolution (other kernels still fold)."""
    import torch.nn.functional as F

    from codec.modules.conv import StreamingConvTranspose1d
    from codec.modules.linear import fast_linear

    torch.manual_seed(kernel * 100 + steps)
    conv = StreamingConvTranspose1d(6, 5, kernel, stride=stride)
    x = torch.randn(batch, 6, steps)
    with torch.no_grad():
        ours = conv._convtr(x)
        c = conv.convtr.convtr
        z = fast_linear(x.transpose(1, 2).reshape(batch * steps, 6), c.weight.view(6, -1).t())  # as the module
        folded = F.fold(z.view(batch, steps, -1).transpose(1, 2), output_size=(1, (steps - 1) * stride + kernel),
                        kernel_size=(1, kernel), stride=(1, stride)).squeeze(2) + c.bias[:, None]
        reference = F.conv_transpose1d(x, c.weight, c.bias, stride)
    assert ours.shape == reference.shape == (batch, 5, (steps - 1) * stride + kernel)
    assert torch.equal(ours, folded)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
