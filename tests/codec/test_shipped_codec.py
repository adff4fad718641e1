"""The codec duplex ships: it loads by default, is stored small, streams equal to offline, and codes speech."""

import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from codec import SHIPPED_CODEC, SHIPPED_CONFIG, MimiConfig, load_shipped_codec


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_codec()


def test_stored_in_half_precision_and_small():
    with safe_open(SHIPPED_CODEC, framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert os.path.getsize(SHIPPED_CODEC) < 16 * 2**20
    cfg = MimiConfig.load(SHIPPED_CONFIG)
    assert cfg.sample_rate == 24000 and cfg.frame_rate == 12.5 and cfg.quantizer.bins == 2048


def test_streams_equal_to_offline(shipped, speechlike):
    pcm = speechlike(2, 16, seed=11)
    codes = shipped.encode(pcm)
    stream = shipped.stream(2)
    streamed = torch.cat([stream.encode(f) for f in pcm.split(shipped.frame_size, dim=-1)], dim=-1)
    assert torch.equal(streamed, codes)
    stream = shipped.stream(2)
    decoded = torch.cat([stream.decode(c) for c in codes.split(1, dim=-1)], dim=-1)
    torch.testing.assert_close(decoded, shipped.decode(codes), atol=1e-5, rtol=0)


def test_codes_espeak_speech(shipped):
    """A trained codec, not random weights: espeak speech comes back with its spectral envelope."""
    from codec.eval.quality import mel_distance, stoi

    espeak = pytest.importorskip("duplex.data.synth.espeak")
    try:
        synth = espeak.Synthesizer()
    except espeak.EspeakError:  # pragma: no cover - .ci/run installs espeak-ng
        pytest.skip("needs espeak-ng")
    speech = synth.speak("what is seven plus five? it is twelve.", voice="en-us+m3", rate=160, pitch=50)
    from codec.io.audio import resample

    pcm = resample(torch.from_numpy(np.asarray(speech.audio, dtype=np.float32))[None], speech.sample_rate, 24000)[0]
    pcm = 0.5 * pcm / pcm.abs().max()
    with torch.no_grad():
        recon = shipped.decode(shipped.encode(pcm[None, None]))[0, 0, : pcm.shape[-1]]
    x, y = pcm.numpy(), recon.numpy()
    # shipped codec: mel 0.61, STOI 0.79 on this utterance (the first one, before transcript distillation: 0.59,
    # 0.79); an untrained codec: mel > 2, STOI ~0.4
    assert mel_distance(y, x) < 0.7
    assert stoi(y, x) > 0.75
