"""Attention that reads only what was written (issue 29): a step attends the first ``attended_slots`` ring slots
instead of the whole ring, and computes what the whole, masked ring computes."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from codec import Mimi
from codec.modules.cpu_paths import generic_kernels
from codec.modules.rope import rope_frequencies
from codec.modules.transformer import Attention, ring_step_tables
from duplex.model import generator
from duplex.model.generator import attended_slots, ring_buckets
from duplex.model.lm import MoshiLM
from duplex.runtime.engine import Engine, SamplingOptions
from tests.helpers import LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG, speech

CONTEXT = 40  # with the first bucket at 8 (``small_buckets``): lengths 8, 16, 32, 40 within a short test


@pytest.fixture
def small_buckets(monkeypatch):
    """Buckets from 8 instead of 64, so that a ring of 40 slots has four lengths (and the tests stay short)."""
    monkeypatch.setattr(generator, "FIRST_RING_BUCKET", 8)


def small_lm(context: int = CONTEXT) -> MoshiLM:
    config = json.loads(LM_SMALL_CONFIG.read_text())
    config["context"] = context
    return MoshiLM.random(config, seed=3)


def test_buckets():
    assert ring_buckets(3000) == (64, 128, 256, 512, 1024, 2048, 3000)
    assert ring_buckets(64) == (64,) and ring_buckets(16) == (16,)
    assert [attended_slots(n, 3000) for n in (0, 63, 64, 375, 2047, 2048, 2999, 5000)] == \
        [64, 64, 128, 512, 2048, 3000, 3000, 3000]
    with pytest.raises(ValueError, match="outside"):
        ring_step_tables(torch.zeros(1, dtype=torch.long), 1, 16, 16, 1, 4, None, None, length=17)


@pytest.mark.parametrize("generic", [False, True])  # the CPU path (additive mask) and the accelerators' (SDPA)
def test_attention_over_the_written_prefix_equals_the_whole_ring(generic):
    torch.manual_seed(0)
    heads, dim, capacity, batch = 4, 32, 100, 3
    attn = Attention(dim, heads, capacity).eval()
    freqs = rope_frequencies(dim // heads, 10000)
    with generic_kernels() if generic else contextlib.nullcontext(), torch.no_grad():
        full, short = attn.new_state(batch, 1, capacity), attn.new_state(batch, 1, capacity)
        for tensor in (*full.values(), *short.values()):  # stale keys of an earlier conversation everywhere
            tensor.normal_()
        short["k"].copy_(full["k"]), short["v"].copy_(full["v"])
        offset = torch.tensor([0, 7, 40])  # three conversations of different ages
        for _ in range(70):
            x = torch.randn(batch, 1, dim)
            newest = int(offset.max())
            length = min(capacity, newest + 1 + int(torch.randint(0, 5, ())))  # any length that holds them
            y_full = attn.step(x, full, ring_step_tables(offset, 1, capacity, capacity, heads, dim // heads, freqs,
                                                         None))
            y_short = attn.step(x, short, ring_step_tables(offset, 1, capacity, capacity, heads, dim // heads,
                                                           freqs, None, length))
            torch.testing.assert_close(y_short, y_full, rtol=1e-6, atol=1e-6)
            offset += 1
        assert int(offset.max()) > capacity  # and on past the wrap, where the whole ring is attended


def _tokens(gen, user, resets):
    out = []
    for step in range(user.shape[0]):
        if step in resets:
            gen.reset(torch.tensor(resets[step]))
        out.append(gen.step(user[step]))
    return torch.stack(out)


@pytest.mark.parametrize("greedy", [True, False])
def test_generator_tokens_equal_the_whole_ring(greedy, small_buckets):
    """Three slots of different ages (one restarted twice), 50 steps: past every bucket and the ring's wrap."""
    lm = small_lm()
    user = torch.randint(0, lm.config.card, (50, 3, lm.config.user_codebooks), generator=torch.Generator().manual_seed(1))
    resets = {6: [False, True, False], 20: [False, False, True], 44: [False, True, False]}
    bucketed = lm.generator(3, greedy=greedy, seed=5)
    whole = lm.generator(3, greedy=greedy, seed=5)
    lengths = []
    original = bucketed._length
    bucketed._length = lambda rows: lengths.append(original(rows)) or lengths[-1]
    a = _tokens(bucketed, user, resets)
    whole._offsets = None  # positions not known on the host: every step attends the whole ring
    b = _tokens(whole, user, resets)
    assert torch.equal(a, b)
    assert lengths[:8] == [8] * 8 and lengths[8] == 16 and lengths[-1] == CONTEXT
    assert set(lengths) == {8, 16, 32, CONTEXT}


def test_generator_positions_on_the_host(small_buckets):
    lm = small_lm()
    gen = lm.generator(2, greedy=True, seed=0)
    user = torch.zeros(2, lm.config.user_codebooks, dtype=torch.long)
    for _ in range(3):
        gen.step(user, active=torch.tensor([True, False]))
    assert gen._offsets == [3, 0] and gen.state["offset"].tolist() == [3, 0]
    gen.advance_to(100, torch.tensor([False, True]))
    assert gen._offsets == [3, 100] and gen.state["offset"].tolist() == [3, 100]
    assert gen._length([True, True]) == CONTEXT and gen._length([True, False]) == 8
    gen.reset(torch.tensor([False, True]))
    assert gen._offsets == [3, 0] and gen._length([True, True]) == 8
    with pytest.raises(ValueError, match="non-negative"):
        gen.advance_to(-1)


def _engine(lm, attend_written_only):
    mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG)
    engine = Engine(lm, mimi, slots=3, sampling=SamplingOptions())
    engine.attend_written_only = attend_written_only
    return engine


def test_engine_equals_the_whole_ring(small_buckets):
    """Sessions opened at different frames and one closed and reopened: the same audio and tokens, bit for bit,
    whether a step attends the written prefix or the whole ring."""
    lm = small_lm()
    pcm = speech(4.0, seed=4).reshape(-1, 1920)
    runs = []
    for attend_written_only in (True, False):
        engine = _engine(lm, attend_written_only)
        slots, out = {}, []
        for i in range(50):
            if i in (0, 5, 12):
                slots[i] = engine.open(seed=i)
            if i == 30:
                engine.close(slots.pop(0))
                slots[30] = engine.open(seed=30)
            result = engine.step({slot: pcm[(i + k) % len(pcm)] for k, slot in enumerate(slots.values())})
            out.append({slot: (audio.copy(), text) for slot, (audio, text) in result.items()})
            out[-1]["tokens"] = engine.last_tokens.clone()
        runs.append(out)
    for a, b in zip(*runs):
        assert torch.equal(a.pop("tokens"), b.pop("tokens"))
        assert a.keys() == b.keys()
        for slot in a:
            np.testing.assert_array_equal(a[slot][0], b[slot][0])
            assert a[slot][1] == b[slot][1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("greedy", [True, False])
def test_cuda_graph_per_length_equals_eager_whole_ring(greedy, small_buckets):
    """On CUDA: one temporal graph per attended length, replayed as the sessions age past every length and the
    ring's wrap, gives the tokens of the eager step over the whole ring (and its audio)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        lm = small_lm().cuda()
        mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG, device="cuda")
        engines = [Engine(lm, mimi, slots=3, cuda_graphs=graphs, sampling=SamplingOptions(greedy=greedy))
                   for graphs in (False, True)]
        engines[0].attend_written_only = False
        slots = [[engine.open(seed=i) for i in range(3)] for engine in engines]
        rng = np.random.default_rng(0)
        for tick in range(60):
            x = (0.1 * rng.standard_normal((3, 1920))).astype(np.float32)
            active = [i for i in range(3) if (tick + i) % 4 != 0 or i == 0]  # slots of different ages
            outs = [engine.step({s[i]: x[i] for i in active}) for engine, s in zip(engines, slots)]
            assert torch.equal(engines[0].last_tokens[active], engines[1].last_tokens[active]), f"tick {tick}"
            for i in active:
                np.testing.assert_allclose(outs[0][slots[0][i]][0], outs[1][slots[1][i]][0], atol=1e-4)
        assert sorted(engines[1]._graphs["temporal"]) == [8, 16, 32, CONTEXT]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_generator_depth_stage_is_replaceable():
    """``LMGenerator.depth_step`` is what runs the depth stage (what ``bench kyutai --compile`` puts a compiled
    ``depth_step`` in): a wrapper around it is called every step and changes nothing."""
    from duplex.model.generator import depth_step

    lm = small_lm()
    user = torch.randint(0, lm.config.card, (6, 2, lm.config.user_codebooks), generator=torch.Generator().manual_seed(2))
    plain, wrapped = lm.generator(2, seed=3), lm.generator(2, seed=3)
    calls = []
    wrapped.depth_step = lambda *args: calls.append(1) or depth_step(*args)
    for step in range(6):
        assert torch.equal(plain.step(user[step]), wrapped.step(user[step]))
    assert len(calls) == 6
