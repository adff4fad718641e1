"""Engine(compile=...): stages compiled by torch.compile give the eager engine's tokens, greedy and sampled (same
seeds): on CPU the depth stage (Inductor's C++ kernels), on CUDA every stage inside the engine's graphs; a stage that
fails to compile runs eagerly after one warning; the caller's modules are left as they were.

Inductor's CPU compile of even the fixture model's depth stage takes over a minute on two cores (some 40 C++
kernels, each its own compiler run; the fixture codec's stages two minutes each), so the CPU test compiles the
depth stage of an engine on a smaller random LM of the fixture's widths (2 depth positions, 1 layer) with
Inductor's scalar C++ code (``cpp.vec_isa_ok=False``, scoped to the test): the same graph, lowering and fusion, in
fewer, faster-compiled kernels. Each test compiles from nothing (a fresh Inductor cache, Dynamo's caches reset), so
it passes alone and its time is the real cost."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from helpers import LM_SMALL_CONFIG, MIMI_SMALL, MIMI_SMALL_CONFIG

from duplex.runtime import compiled as compiled_module

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU kernels need a C++ compiler (g++)")

# Per-slot sampling of the comparison: a greedy slot and sampled slots with their own settings and seeds.
SLOTS = [dict(temperature=0.0, text_temperature=0.0, seed=1),
         dict(temperature=0.8, top_k=20, text_temperature=0.7, text_top_k=10, seed=2),
         dict(temperature=1.2, top_k=0, text_temperature=1.0, text_top_k=0, seed=3)]


@pytest.fixture
def fresh_compile():
    """Nothing compiled before survives into the test: a fresh Inductor cache folder, Dynamo's caches reset."""
    from torch._inductor.utils import fresh_cache  # noqa: PLC0415 - Inductor (seconds): where a test compiles

    torch._dynamo.reset()
    with fresh_cache():
        yield
    torch._dynamo.reset()


def _small_models(device="cpu"):
    """A random LM of the fixture's widths with 2 depth positions and 1 layer each, and the fixture codec."""
    from codec import Mimi
    from duplex.model.lm import MoshiLM

    config = json.loads(LM_SMALL_CONFIG.read_text())
    config.update(n_q=4, dep_q=2, delays=[0, 0, 1, 0, 1], num_layers=1, depformer_num_layers=1)
    return (MoshiLM.random(config, seed=0, device=device),
            Mimi.from_checkpoint(MIMI_SMALL, config=MIMI_SMALL_CONFIG, device=device))


def _same_tokens(a, b, ticks, atol=None):
    """Step engines ``a`` and ``b`` on the same audio (sessions of SLOTS that skip ticks): identical tokens every
    tick (and audio equal within ``atol`` when given); returns how many tokens were compared."""
    slots_a = [a.open(**s) for s in SLOTS]
    slots_b = [b.open(**s) for s in SLOTS]
    rng = np.random.default_rng(0)
    compared = 0
    for tick in range(ticks):
        x = (0.1 * rng.standard_normal((len(SLOTS), a.frame_size))).astype(np.float32)
        active = [i for i in range(len(SLOTS)) if (tick + i) % 4 != 3]
        out_a = a.step({slots_a[i]: x[i] for i in active})
        out_b = b.step({slots_b[i]: x[i] for i in active})
        if atol is not None:
            for i in active:
                np.testing.assert_allclose(out_a[slots_a[i]][0], out_b[slots_b[i]][0], atol=atol, rtol=0)
        assert torch.equal(a.last_tokens[slots_a][active], b.last_tokens[slots_b][active]), f"tick {tick}"
        compared += a.last_tokens[slots_a][active].numel()
    return compared


@needs_cxx
def test_compiled_depth_stage_gives_the_eager_tokens_on_cpu(fresh_compile):
    from duplex.runtime.engine import Engine

    lm, mimi = _small_models()
    modules = {name: type(m) for name, m in lm.named_modules()}
    eager = Engine(lm, mimi, slots=4)
    compiled = Engine(lm, mimi, slots=4, compile="depth")
    assert set(compiled.compiled) == {"depth"} and not eager.compiled
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False, "fx_graph_cache": False, "compile_threads": 1}):
        assert _same_tokens(eager, compiled, ticks=12) > 0
    stage = compiled.compiled["depth"]
    assert stage.compiled and stage.error is None and stage.compile_seconds > 0  # really compiled, not the fallback
    # The caller's LM is the module it was: nothing wrapped or replaced in it.
    assert {name: type(m) for name, m in lm.named_modules()} == modules
    assert "_stage_depth" not in vars(eager)


def test_a_stage_that_fails_to_compile_runs_eagerly_after_one_warning(monkeypatch, caplog):
    from helpers import make_engine

    def failing_compile(stage, **options):
        def run(*args):
            raise RuntimeError("no compiler here\nsecond line")
        return run

    monkeypatch.setattr(compiled_module.torch, "compile", failing_compile)
    eager, fallback = make_engine(3), make_engine(3, compile=True)
    with caplog.at_level(logging.WARNING, logger="duplex.runtime.compiled"):
        _same_tokens(eager, fallback, ticks=4)
    assert list(fallback.compiled) == ["encode", "depth", "decode"]
    for stage in fallback.compiled.values():
        assert not stage.compiled and stage.error == "RuntimeError: no compiler here"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(warnings) == [f"compiling the {name} stage failed (RuntimeError: no compiler here); running it "
                                "eagerly" for name in ("decode", "depth", "encode")]  # one each, not one per tick


def test_what_compile_names():
    from duplex.runtime.compiled import compile_plan

    assert compile_plan(False) == compile_plan(None) == (None, ())
    assert compile_plan(True) == ("default", ("encode", "depth", "decode"))
    assert compile_plan("depth") == ("default", ("depth",))
    assert compile_plan(["decode", "encode", "max-autotune-no-cudagraphs"]) == ("max-autotune-no-cudagraphs",
                                                                                 ("encode", "decode"))
    assert compile_plan("max-autotune-no-cudagraphs") == ("max-autotune-no-cudagraphs", ("encode", "depth", "decode"))
    with pytest.raises(ValueError, match="CUDA graph modes are left out"):
        compile_plan("reduce-overhead")
    with pytest.raises(ValueError, match="one mode at most"):
        compile_plan(["default", "max-autotune-no-cudagraphs"])


@pytest.mark.gpu
@needs_cuda
def test_cuda_compiled_stage_in_graphs_equals_eager(fresh_compile):
    """On CUDA the compiled stages (encode, depth, decode: Triton kernels) are captured in the engine's own graphs,
    and give the eager engine's tokens, greedy and sampled slots side by side (SLOTS), and its audio within 1e-4
    (the fixture model, float32 without TF32)."""
    from helpers import make_engine

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        eager = make_engine(4, device="cuda", cuda_graphs=False)
        graphed = make_engine(4, device="cuda", cuda_graphs=True, compile=True)
        _same_tokens(eager, graphed, ticks=24, atol=1e-4)
        assert graphed.cuda_graphs and graphed._graphs is not None  # captured, not the eager fallback
        assert all(stage.compiled and stage.error is None for stage in graphed.compiled.values())
        assert list(graphed.compiled) == ["encode", "depth", "decode"]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_bench_latency_compile_builds_compiled_engines_and_says_so(monkeypatch, tmp_path, capsys):
    """--compile reaches the engines (torch.compile replaced here by the stage itself: the option's path, not
    Inductor): the stages it names, or all; the report says what was compiled and how long it took; without it,
    nothing is compiled."""
    from helpers import SMALL_MODEL_ARGS

    from duplex.cli import main

    monkeypatch.setattr(compiled_module.torch, "compile", lambda stage, **options: stage)
    out = tmp_path / "latency.json"
    args = ["bench", "latency", *SMALL_MODEL_ARGS, "--batch-sizes", "1", "--frames", "2", "--warmup", "1",
            "--json", str(out)]
    assert main([*args, "--compile", "depth"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["compile"] == ["depth"] and isinstance(report["runs"][0]["compiled"]["depth"], float)
    assert "compiled: depth (torch.compile)" in table
    assert "compiled (in the warm-up frames): eager batch 1: depth" in table
    assert main([*args, "--compile"]) == 0
    assert json.loads(out.read_text())["compile"] == ["encode", "depth", "decode"]
    assert "compiled: encode depth decode (torch.compile)" in capsys.readouterr().out
    assert main(args) == 0
    assert "compiled" not in capsys.readouterr().out and "compiled" not in json.loads(out.read_text())["runs"][0]


def test_the_rings_compiled_writes_are_the_eager_writes():
    """Traced by torch.compile, the codec's transformer writes its KV rings with index_put_ (kept in place by
    Inductor) instead of scatter_: the same rings and outputs, step by step, with rows that skip steps past the
    ring's length (Dynamo's graph run by eager kernels, both sides on the generic kernels GPUs run, so any
    difference is the write's)."""
    from codec.config import TransformerConfig
    from codec.modules.cpu_paths import generic_kernels
    from codec.modules.state import leaves
    from codec.modules.transformer import MimiTransformer

    torch.manual_seed(0)
    transformer = MimiTransformer(TransformerConfig(d_model=16, num_heads=2, num_layers=1, context=5,
                                                    dim_feedforward=32, layer_scale=0.1)).eval()
    eager_state, traced_state = transformer.new_state(3, 2), transformer.new_state(3, 2)
    traced = torch.compile(transformer.step, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad(), generic_kernels():
        for step in range(8):  # 2 positions a step: the ring of 5 wraps
            x = torch.randn(3, 16, 2)
            active = torch.tensor([True, step % 2 == 0, step != 1])
            out = transformer.step(x, eager_state, active)
            assert torch.equal(traced(x, traced_state, active), out), f"step {step}"
            assert all(torch.equal(a, b) for a, b in zip(leaves(eager_state), leaves(traced_state))), f"step {step}"
    torch._dynamo.reset()


def test_warm_up_compiles_and_changes_nothing_a_session_sees(monkeypatch):
    """What a server does before taking sessions (cli/common.build_engine): one step in which no slot takes part
    compiles the stages (torch.compile replaced here by the stage itself), is not timed, and leaves the sessions
    as they were (their next frames equal those of an engine that was not warmed up; only the spare ring slots
    that inactive rows write, never attended, differ)."""
    from helpers import make_engine

    from duplex.runtime.compiled import warm_up

    monkeypatch.setattr(compiled_module.torch, "compile", lambda stage, **options: stage)
    plain, warmed = make_engine(2), make_engine(2, compile=True)
    slots = [(e.open(seed=3), e.open(seed=4)) for e in (plain, warmed)]
    rng = np.random.default_rng(0)
    for tick in range(6):
        x = (0.1 * rng.standard_normal((2, plain.frame_size))).astype(np.float32)
        if tick == 2:
            assert warm_up(warmed) > 0
            assert all(stage.compiled for stage in warmed.compiled.values())
            assert all(len(v) == 2 for v in warmed.timer.history.values())  # the warm-up step is not timed
        a = plain.step({slots[0][i]: x[i] for i in range(2)})
        b = warmed.step({slots[1][i]: x[i] for i in range(2)})
        assert torch.equal(plain.last_tokens, warmed.last_tokens), f"tick {tick}"
        for i in range(2):
            assert np.array_equal(a[slots[0][i]][0], b[slots[1][i]][0]), f"tick {tick}"


def test_an_engine_from_the_command_line_is_compiled_before_it_serves(monkeypatch, capsys):
    """--compile [STAGE ...] on a command that builds an engine (serve, mic, bench serve, turns run): the stages
    named (all when none is) are compiled as the engine is built, and it says so."""
    import argparse

    from helpers import SMALL_MODEL_ARGS

    from duplex.cli.common import add_model_options, build_engine

    monkeypatch.setattr(compiled_module.torch, "compile", lambda stage, **options: stage)
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    engine = build_engine(parser.parse_args([*SMALL_MODEL_ARGS, "--compile", "depth"]), slots=1)
    assert list(engine.compiled) == ["depth"] and engine.compiled["depth"].compiled
    err = capsys.readouterr().err
    assert "compiling depth (torch.compile" in err and "compiled in" in err
    assert list(build_engine(parser.parse_args([*SMALL_MODEL_ARGS, "--compile"]), slots=1).compiled) == [
        "encode", "depth", "decode"]
    assert build_engine(parser.parse_args(SMALL_MODEL_ARGS), slots=1).compiled == {}
    assert "compiling" not in capsys.readouterr().err.split("compiled in")[-1]
