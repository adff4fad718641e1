"""The frame-locked engine on the small reference models (the LM and codec share a 64-entry vocabulary)."""

import helpers
import numpy as np
import pytest
import torch

from duplex.errors import UsageError
from duplex.model.sampling import SlotSampling
from duplex.runtime.engine import Engine, EngineFull, SamplingOptions


def make_engine(slots=4, greedy=True, **kwargs):
    return helpers.make_engine(slots, greedy=greedy, **kwargs)


def frames(seed, n):
    g = np.random.default_rng(seed)
    t = np.arange(n * 1920) / 24000
    wave = 0.3 * np.sin(2 * np.pi * (150 + 50 * g.random()) * t) + 0.02 * g.standard_normal(t.shape)
    return wave.astype(np.float32).reshape(n, 1920)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_timeline_first_frame_silent_then_audio():
    eng = make_engine(slots=2)
    slot = eng.open()
    x = frames(0, 4)
    first = eng.step({slot: x[0]})[slot]
    assert first[0].shape == (1920,) and first[0].dtype == np.float32
    assert not first[0].any() and first[1] is None and (eng.last_tokens[slot] == -2).all()
    for i in range(1, 4):
        audio, text = eng.step({slot: x[i]})[slot]
        assert np.abs(audio).max() > 0 and (eng.last_tokens[slot] >= 0).all()


@pytest.mark.parametrize("quantized", [{}, {"quantize": "int8"}, {"quantize": "fp8", "kv_dtype": torch.float8_e4m3fn},
                                       {"kv_dtype": torch.float8_e4m3fn}], ids=["plain", "int8", "fp8", "fp8-ring"])
def test_slot_isolation_bit_exact(quantized):
    """A session's output in a busy engine (others opening, closing and skipping ticks) equals the same session
    run alone, even when it skips ticks itself; with quantized weights and the fp8 KV ring too."""
    steps = 30
    x = frames(1, steps)

    alone = make_engine(slots=4, **quantized)
    for _ in range(3):
        alone.open()  # occupy slots 0-1 without ever stepping them, so the session lands on the same row
    alone.close(2)
    solo_slot = alone.open()
    assert solo_slot == 2
    solo_audio, solo_tokens = [], []
    for i in range(steps):
        solo_audio.append(alone.step({solo_slot: x[i]})[solo_slot][0])
        solo_tokens.append(alone.last_tokens[solo_slot].clone())

    busy = make_engine(slots=4, **quantized)
    noise = np.random.default_rng(7)
    others = {busy.open(): 0, busy.open(): 0}
    slot = busy.open()
    assert slot == 2
    got_audio, got_tokens = [], []
    i = tick = 0
    while i < steps:
        tick += 1
        request = {s: frames(100 + tick, 1)[0] for s in others if noise.random() < 0.7}
        if tick % 4 != 3:  # the session skips every fourth tick
            request[slot] = x[i]
        if tick in (5, 12):  # sessions come and go around it
            victim = next(iter(others))
            busy.close(victim)
            request.pop(victim, None)
            del others[victim]
            others[busy.open()] = 0
        out = busy.step(request)
        if slot in request:
            got_audio.append(out[slot][0])
            got_tokens.append(busy.last_tokens[slot].clone())
            i += 1
    for a, b in zip(got_audio, solo_audio):
        assert np.array_equal(a, b)
    assert torch.equal(torch.stack(got_tokens), torch.stack(solo_tokens))


def _conversation_state(eng):
    """Every state tensor of every slot, except the spare ring slots that receive the keys and values of rows
    that are not executing (written every step, never attended: scratch, not conversation state)."""
    from codec.modules.state import leaves

    def rings(state, capacity):
        for name, layer in state["layers"].items():
            yield from (layer["k"][:, :, :capacity], layer["v"][:, :, :capacity])

    rest = []
    for state in (eng.encoder_state, eng.decoder_state):
        rest += [state[key] for key in state if key != "transformer"]
        rest += [state["transformer"]["offset"], *rings(state["transformer"], state["transformer"]["capacity"])]
    gen = eng.generator_state
    rest += [gen["cache"], gen["offset"], *rings(gen, eng.lm.config.context)]
    return [t.clone() for item in rest for t in (leaves(item) if isinstance(item, dict) else [item])]


@pytest.mark.parametrize("generic", [False, True])
def test_step_with_no_active_slot_changes_no_state(generic):
    """CUDA-graph warm-up and capture run the frame step with every slot inactive and rely on it leaving every
    conversation's state as it was; checked here on both kernel paths (generic = what GPUs run)."""
    import contextlib

    from codec.modules.cpu_paths import generic_kernels
    from duplex.model.generator import ring_buckets

    eng = make_engine(slots=3, greedy=False)
    slots = [eng.open(seed=i) for i in range(3)]
    x = frames(3, 6)
    for tick in range(6):
        eng.step({s: x[tick] for s in slots})
    before = _conversation_state(eng)
    with generic_kernels() if generic else contextlib.nullcontext(), torch.no_grad():
        eng.active.zero_()
        for length in (*ring_buckets(eng.ring_capacity), eng.ring_capacity):  # as the capture runs each length
            eng._run_eager(timed=False, length=length)
    after = _conversation_state(eng)
    assert len(before) == len(after) > 20
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_engine_full_and_slot_errors():
    eng = make_engine(slots=2)
    a, b = eng.open(), eng.open()
    with pytest.raises(EngineFull, match="engine full: all 2 slots are in use"):
        eng.open()
    eng.close(a)
    assert eng.free_slots == 1 and eng.open() == a
    with pytest.raises(ValueError, match=r"slot must be an integer in \[0, 2\), got 5"):
        eng.step({5: np.zeros(1920, np.float32)})
    eng.close(b)
    with pytest.raises(ValueError, match="slot 1 is not open"):
        eng.step({b: np.zeros(1920, np.float32)})


@pytest.mark.parametrize("frame, words", [
    (np.zeros(1919, np.float32), "expected one mono frame of 1920 samples"),
    (np.zeros((2, 1920), np.float32), "expected one mono frame of 1920 samples"),
    (np.zeros((2, 960), np.float32), r"expected one mono frame of 1920 samples .*got shape \[2, 960\]"),
    (np.full(1920, np.nan, np.float32), "non-finite"),
    ("not audio", "not numeric"),
    (None, "not numeric"),
    (np.zeros(1920, np.int16), "float PCM in \\[-1, 1\\], got int16"),
    (torch.zeros(1920, dtype=torch.int16), "float PCM in \\[-1, 1\\], got torch.int16"),
])
def test_bad_frames_are_refused_and_nothing_is_lost(frame, words):
    eng, ref = make_engine(slots=2), make_engine(slots=2)
    a, b = eng.open(), eng.open()
    ra, rb = ref.open(), ref.open()
    x = frames(3, 3)
    eng.step({a: x[0], b: x[0]})
    ref.step({ra: x[0], rb: x[0]})
    with pytest.raises(ValueError, match=f"slot {b}: .*{words}"):
        eng.step({a: x[1], b: frame})
    # the refused call advanced nobody: both sessions continue exactly like a reference that never saw it
    out, expected = eng.step({a: x[1], b: x[1]}), ref.step({ra: x[1], rb: x[1]})
    assert np.array_equal(out[a][0], expected[ra][0]) and np.array_equal(out[b][0], expected[rb][0])


def test_step_takes_a_mapping_and_accepts_a_channel_first_frame():
    eng = make_engine(slots=1)
    slot = eng.open()
    for bad in (None, [np.zeros(1920, np.float32)]):
        with pytest.raises(TypeError, match=r"Engine.step takes a mapping \{slot: frame\}"):
            eng.step(bad)
    assert eng.step({slot: np.zeros((1, 1920), np.float32)})[slot][0].shape == (1920,)
    assert eng.step({slot: [0.0] * 1920})[slot][0].shape == (1920,)


def test_sampling_settings_per_session():
    eng = make_engine(slots=2, greedy=False)
    with pytest.raises(ValueError, match="temperature"):
        eng.open(temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_k must be an integer >= 0 \(0: no truncation\)"):
        eng.open(top_k=-1)
    assert eng.free_slots == 2  # a refused open takes no slot
    whole = eng.open(top_k=0)  # as the generator (and Kyutai's sampler): 0 keeps the whole vocabulary
    assert int(eng.sampling.audio.top_k[whole]) == eng.sampling.audio.k_max
    eng.close(whole)
    for slot in (-1, 2, whole):  # out of range, or not open: refused, nothing half-applied
        with pytest.raises(ValueError, match="slot"):
            eng.configure(slot, SlotSampling(temperature=1.5, top_k=5, text_temperature=0.5, text_top_k=5, seed=999))
    assert int(eng.sampling.seed[-1]) != 999 and float(eng.sampling.audio.temperature[-1]) != 1.5
    a = eng.open(seed=5, temperature=1.0, top_k=10)
    assert int(eng.sampling.audio.top_k[a]) == 10
    b = eng.open(seed=5, temperature=1.0, top_k=10)
    x = frames(4, 6)
    outs = [eng.step({a: f, b: f}) for f in x]
    # same seed, same input, same settings: the two sessions sample the same conversation
    assert all(np.array_equal(o[a][0], o[b][0]) for o in outs)


def test_slot_sampling_is_one_checked_value_passed_whole():
    """One frozen value per slot: checked when made, defaulted by the engine's options, applied whole."""
    with pytest.raises(UsageError, match="text_temperature must be a finite number >= 0"):
        SlotSampling(text_temperature=float("nan"))
    with pytest.raises(UsageError, match="seed must be an integer"):
        SlotSampling(seed=1.5)
    with pytest.raises(UsageError, match="unknown sampling setting temprature"):
        SlotSampling().replace(temprature=0.5)
    assert SlotSampling() == SlotSampling(0.8, 250, 0.7, 25, None)  # Kyutai's defaults
    assert type(SlotSampling(seed=np.int64(3)).seed) is int
    eng = make_engine(slots=3, greedy=False)
    assert eng.options.default == SamplingOptions().default == SlotSampling()
    eng.options.default = SlotSampling(top_k=7, seed=11)  # what new sessions get from now on
    a = eng.open()  # the engine's default
    b = eng.open(SlotSampling(temperature=0.5, top_k=3, text_temperature=0.2, text_top_k=2, seed=4))
    c = eng.open(top_k=9)  # one field changed, the rest from the default
    audio, text = eng.sampling.audio, eng.sampling.text
    assert (int(audio.top_k[a]), int(eng.sampling.seed[a])) == (7, 11)
    assert (float(audio.temperature[b]), int(audio.top_k[b]), float(text.temperature[b]), int(text.top_k[b]),
            int(eng.sampling.seed[b])) == (0.5, 3, pytest.approx(0.2), 2, 4)
    assert (int(audio.top_k[c]), int(eng.sampling.seed[c])) == (9, 11)
    eng.configure(a, SlotSampling(temperature=0.0, seed=None))  # seed None: a random one
    assert bool(audio.greedy[a]) and int(eng.sampling.seed[a]) != 11
    with pytest.raises(TypeError, match="SlotSampling"):
        eng.configure(a, {"temperature": 0.5})


@pytest.mark.slow
def test_long_run_past_every_window_without_growing_memory():
    """300 frames: past the LM's 16-step context and the codec's 250-step attention window."""
    eng = make_engine(slots=2)
    slot = eng.open()
    x = frames(5, 20)
    pointers = [t.data_ptr() for t in (eng.generator_state["cache"], eng.encoder_state["transformer"]["offset"])]
    for i in range(100):
        eng.step({slot: x[i % 20]})
    before = rss_mb()
    for i in range(200):
        audio, _ = eng.step({slot: x[i % 20]})[slot]
        assert np.isfinite(audio).all()
    assert rss_mb() - before < 20
    assert int(eng.generator_state["offset"][slot]) == 300
    assert [t.data_ptr() for t in (eng.generator_state["cache"], eng.encoder_state["transformer"]["offset"])] \
        == pointers


@pytest.mark.slow
def test_open_close_1000_times_without_leaking():
    eng = make_engine(slots=3)
    keep = eng.open()
    x = frames(6, 2)
    for i in range(50):
        slot = eng.open()
        eng.step({slot: x[i % 2], keep: x[0]})
        eng.close(slot)
    before = rss_mb()
    for i in range(1000):
        slot = eng.open()
        if i % 10 == 0:
            eng.step({slot: x[i % 2]})
        eng.close(slot)
    assert eng.free_slots == 2
    assert rss_mb() - before < 20


def test_default_engine_builds_without_downloads_and_runs():
    eng = Engine.default(slots=1)
    cfg = eng.lm.config  # the shipped LM: the `default` preset's shape, the vocabulary of its own tokenizer
    assert (cfg.dim, cfg.num_layers, cfg.depformer_dim, cfg.context) == (256, 6, 128, 100)
    assert cfg.text_card == eng.tokenizer.vocab_size
    assert eng.mimi.num_codebooks == 8 and eng.mimi.cardinality == eng.lm.config.card == 2048
    from codec import SHIPPED_CONFIG, MimiConfig
    assert eng.mimi.config == MimiConfig.load(SHIPPED_CONFIG)  # the codec duplex trained and ships
    slot = eng.open(seed=0)
    z = np.zeros(1920, np.float32)
    eng.step({slot: z})
    audio, text = eng.step({slot: z})[slot]
    assert audio.shape == (1920,) and np.isfinite(audio).all() and (text is None or isinstance(text, str))
    summary = eng.timer.summary()
    assert set(summary) >= {"encode", "temporal", "depth", "decode", "total"}


def _adapted_engine(slots: int):
    from codec import Mimi
    from duplex.model import lora
    from duplex.model.lm import MoshiLM
    from duplex.runtime.engine import Engine, SamplingOptions
    from tests.helpers import FIXTURES, LM_SMALL, LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

    lm = MoshiLM.from_checkpoint(LM_SMALL, config=LM_SMALL_CONFIG, dtype=torch.float32)
    path = FIXTURES / "lora_small" / "lora.safetensors"
    lm.add_adapter(path)
    other = lora.read_lora(path, scaling=-1.0, targets=lora.adapted_weights(lm))
    other.name = "inverted"
    lm.add_adapter(other)
    mimi = Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG)
    return Engine(lm, mimi, slots=slots, sampling=SamplingOptions(greedy=True))


def test_slots_with_different_adapters_in_one_batch_get_what_each_gets_alone():
    """Per-slot LoRA adapters are data in the batched step: each session's tokens equal the same session run with
    the others idle, whichever adapter the others run (issue 26: "per-slot adapters in one batch")."""
    steps, choices = 12, ["lora_small", "none", "inverted"]
    busy = _adapted_engine(3)
    assert busy.adapters == ["lora_small", "inverted"]
    slots = [busy.open(adapter=choice) for choice in choices]
    assert [busy.slot_adapter(s) for s in slots] == ["lora_small", None, "inverted"]
    x = {s: frames(20 + s, steps) for s in slots}
    together = {s: [] for s in slots}
    for i in range(steps):
        busy.step({s: x[s][i] for s in slots})
        for s in slots:
            together[s].append(busy.last_tokens[s].clone())
    for s, choice in zip(slots, choices):
        alone = _adapted_engine(3)
        for _ in range(s):
            alone.open()
        assert alone.open(adapter=choice) == s
        got = []
        for i in range(steps):
            alone.step({s: x[s][i]})
            got.append(alone.last_tokens[s].clone())
        assert torch.equal(torch.stack(got), torch.stack(together[s])), choice
    assert not torch.equal(torch.stack(together[0]), torch.stack(together[1]))  # the adapters do change the tokens
    with pytest.raises(Exception, match="no adapter 'missing' on this engine"):
        busy.close(slots[0]) or busy.open(adapter="missing")
