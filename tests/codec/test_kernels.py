"""Our own CPU kernels (codec/kernels): the values of PyTorch's route, the ring's exactness, the fallbacks."""

import logging
import math

import pytest
import torch

import codec.kernels as kernels_module
from codec.kernels import cpu_kernels, library_path
from codec.modules.linear import fast_linear
from codec.modules.transformer import ring_attention_cpu

kernels = cpu_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason="duplex's CPU kernels could not be built here")


def _reference_attention(q, k, v, mask):
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _mask(b, rows, length, generator, hidden=0.3):
    hide = torch.rand(b, 1, rows, length, generator=generator) < hidden
    hide[..., 0] = False  # every row sees at least one slot
    return torch.zeros(b, 1, rows, length).masked_fill_(hide, -math.inf)


@needs_kernels
@pytest.mark.parametrize("b, h, rows, mask_rows, length, d", [(1, 8, 1, 1, 3000, 64), (3, 2, 4, 1, 37, 16),
                                                               (2, 3, 5, 5, 70, 24), (2, 1, 1, 1, 1, 8)])
def test_ring_attention_is_pytorchs(b, h, rows, mask_rows, length, d):
    g = torch.Generator().manual_seed(length)
    q = torch.randn(b, h, rows, d, generator=g)
    ring = torch.randn(2, b, h, length + 7, d, generator=g)  # a ring with spare slots: strided views
    k, v = ring[0, :, :, :length], ring[1, :, :, :length]
    mask = _mask(b, mask_rows, length, g)
    out = kernels.ring_attention(q, k, v, mask)
    torch.testing.assert_close(out, _reference_attention(q, k, v, mask), atol=2e-6, rtol=1e-5)


@needs_kernels
def test_attending_the_written_slots_is_attending_the_masked_ring_bit_for_bit():
    """What issue 29's ring lengths rely on: slots past ``length`` masked add exactly nothing."""
    g = torch.Generator().manual_seed(0)
    capacity, written = 300, 130
    q = torch.randn(2, 4, 1, 32, generator=g)
    k, v = torch.randn(2, 2, 4, capacity, 32, generator=g)
    mask = _mask(2, 1, capacity, g)
    mask[..., written:] = -math.inf
    for length in (written, 256, capacity):
        assert torch.equal(kernels.ring_attention(q, k[:, :, :length], v[:, :, :length], mask[..., :length]),
                           kernels.ring_attention(q, k, v, mask)), length


@needs_kernels
def test_ring_attention_over_no_visible_slot_is_nan_as_pytorchs():
    q, k, v = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    mask = torch.full((1, 1, 1, 4), -math.inf)
    assert torch.isnan(kernels.ring_attention(q, k, v, mask)).all()
    assert torch.isnan(_reference_attention(q, k, v, mask)).all()


@needs_kernels
def test_ring_attention_over_no_slot_is_zeros_as_pytorchs():
    q, k = torch.randn(1, 2, 1, 8), torch.zeros(1, 2, 0, 8)
    mask = torch.zeros(1, 1, 1, 0)
    assert torch.equal(kernels.ring_attention(q, k, k, mask), _reference_attention(q, k, k, mask))


def test_what_the_kernel_does_not_compute_takes_pytorchs_route():
    """A mask broadcast over the batch, a gradient wanted through the values: the library's route, as before."""
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(3, 2, 2, 1, 6, 8, generator=g)
    mask = torch.zeros(1, 1, 1, 6)
    torch.testing.assert_close(ring_attention_cpu(q, k, v, mask), _reference_attention(q, k, v, mask))
    v = v[0:1].clone().requires_grad_(True)
    ring_attention_cpu(q[0:1], k[0:1], v, mask).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_a_machine_with_a_compiler_builds_them():
    """So a change that breaks cpu.cpp fails here instead of quietly skipping the tests above."""
    if kernels_module._compiler() is None or not kernels_module.enabled():
        pytest.skip("no C++ compiler (or DUPLEX_CPU_KERNELS=0): PyTorch's kernels serve")
    assert kernels is not None


@needs_kernels
def test_ring_attention_refuses_what_it_does_not_compute():
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(RuntimeError, match="mask"):
        kernels.ring_attention(q, k, k, torch.zeros(1, 1, 1, 4))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.ring_attention(q.double(), k.double(), k.double(), torch.zeros(1, 1, 1, 5).double())


@needs_kernels
@pytest.mark.parametrize("out_features, in_features", [(512, 512), (7, 37), (2048, 256), (65, 3)])
def test_gemv_is_the_product(out_features, in_features):
    g = torch.Generator().manual_seed(out_features)
    packed = torch.randn(3 * out_features, in_features, generator=g)
    weight = packed[out_features:2 * out_features]  # a block of rows of a packed matrix
    strided = packed[::3]  # rows further apart
    x = torch.randn(1, 1, in_features, generator=g)
    for w in (weight, strided):
        out = kernels.gemv(x, w)
        assert out.shape == (1, 1, out_features)
        torch.testing.assert_close(out, x @ w.T, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_gemv_refuses_what_it_does_not_compute():
    with pytest.raises(RuntimeError, match="one row"):
        kernels.gemv(torch.randn(2, 8), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="row-major"):
        kernels.gemv(torch.randn(1, 8), torch.randn(8, 4).T)


@needs_kernels
def test_the_hot_path_takes_the_kernels_for_what_they_compute():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 32, generator=g)
    x = torch.randn(1, 32, generator=g)
    with torch.no_grad():
        assert torch.equal(fast_linear(x, w), kernels.gemv(x, w))  # one row, row-major
        torch.testing.assert_close(fast_linear(x.expand(3, -1), w), x.expand(3, -1) @ w.T)  # more rows: oneDNN
        q = torch.randn(1, 2, 1, 8, generator=g)
        k, v = torch.randn(2, 1, 2, 6, 8, generator=g)
        mask = torch.zeros(1, 1, 1, 6)
        assert torch.equal(ring_attention_cpu(q, k, v, mask), kernels.ring_attention(q, k, v, mask))
        odd = k.transpose(2, 3).contiguous().transpose(2, 3)  # no unit stride on d: PyTorch's products
        torch.testing.assert_close(ring_attention_cpu(q, odd, v, mask), _reference_attention(q, k, v, mask))
    x.requires_grad_(True)  # training: PyTorch's differentiable route
    assert fast_linear(x, w).grad_fn is not None


def _fresh(monkeypatch, tmp_path):
    """The loader as if nothing had been tried or loaded in this process, with its cache in ``tmp_path``."""
    monkeypatch.setattr(kernels_module, "_registered", lambda: None)
    monkeypatch.setattr(kernels_module, "_tried", False)
    monkeypatch.setattr(kernels_module, "_loaded", None)
    monkeypatch.setenv("DUPLEX_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("DUPLEX_CPU_KERNELS", raising=False)


def test_switched_off_the_library_route_serves(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("DUPLEX_CPU_KERNELS", "0")
    assert cpu_kernels() is None and kernels_module.gemv_op() is None
    x, w = torch.randn(1, 16), torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast_linear(x, w), x @ w.T)
    assert list(tmp_path.iterdir()) == []  # nothing built


@pytest.mark.parametrize("compiler", [None, "false"])
def test_a_machine_that_cannot_build_them_warns_once_and_serves(monkeypatch, tmp_path, caplog, compiler):
    """No compiler, or one that fails: one warning, the library's route, and no half-made file in the cache."""
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(kernels_module, "_compiler", lambda: None if compiler is None else "/bin/false")
    with caplog.at_level(logging.WARNING, logger="codec.kernels"):
        assert cpu_kernels() is None
        assert cpu_kernels() is None  # tried once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "are not available" in warnings[0]
    assert ("no C++ compiler" if compiler is None else "build failed") in warnings[0]
    assert not any(p.suffix == ".so" for p in tmp_path.rglob("*"))


def test_a_build_is_for_this_source_torch_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("DUPLEX_KERNEL_CACHE", str(tmp_path))
    here = library_path()
    assert here.parent == tmp_path and here.name.startswith("duplex_cpu-") and here.suffix == ".so"
    monkeypatch.setattr(kernels_module, "_cpu_identity", lambda: "flags: another cpu")
    assert library_path() != here  # a cache shared with another machine never loads this one's build


@needs_kernels
def test_a_compiled_graph_multiplies_as_the_eager_step(monkeypatch):
    def product(x, w):
        return fast_linear(x, w)

    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 1, 64, generator=g), torch.randn(48, 64, generator=g)
    with torch.no_grad():
        traced = torch.compile(product, fullgraph=True, backend="eager")
        assert torch.equal(traced(x, w), product(x, w))  # the same kernel: the same bits
        # Not yet loaded when tracing starts: nothing is built while tracing (the library's route, whole graph)...
        torch._dynamo.reset()
        monkeypatch.setattr(kernels_module, "_tried", False)
        monkeypatch.setattr(kernels_module, "_loaded", None)
        traced = torch.compile(product, fullgraph=True, backend="eager")
        torch.testing.assert_close(traced(x, w), x @ w.T)
        assert not kernels_module._tried
        # ... and a compiled stage loads them before it traces.
        from duplex.runtime.compiled import CompiledStage

        CompiledStage("depth", product)
        assert kernels_module._tried and kernels_module._loaded is not None
    torch._dynamo.reset()


@needs_kernels
def test_asking_again_in_the_same_process_finds_them_loaded(monkeypatch, caplog):
    monkeypatch.setattr(kernels_module, "_tried", False)
    monkeypatch.setattr(kernels_module, "_loaded", None)
    with caplog.at_level(logging.WARNING, logger="codec.kernels"):
        assert cpu_kernels() is not None
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@needs_kernels
def test_a_damaged_cached_build_is_built_again(tmp_path):
    """In a fresh process (a library's operators load once per process): a cache file that does not load is
    replaced by a new build, which serves."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DUPLEX_KERNEL_CACHE": str(tmp_path)}
    env.pop("DUPLEX_CPU_KERNELS", None)
    code = ("from codec.kernels import cpu_kernels, library_path; import sys; p = library_path(); "
            "p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(b'not a library'); "
            "sys.exit(0 if cpu_kernels() is not None and p.stat().st_size > 1000 else 1)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
