"""The native EM routing kernel (capsnet/nn/csrc/em_routing.cpp through capsnet.nn.native): built
here, equal to the written-out reference and to the PyTorch path, values and gradients."""

import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from tests.test_em_routing import _inputs, _votes, reference_em

from capsnet.nn import em, native
from capsnet.nn.em_conv import conv_em_routing


@pytest.fixture(autouse=True)
def _native_on(monkeypatch):  # the tests below check the PyTorch path where none builds
    monkeypatch.delenv("CAPSNET_NATIVE", raising=False)


@pytest.mark.usefixtures("native_kernels")
def test_the_kernel_builds_and_takes_cpu_tensors():
    # with a C++ compiler (CI has one) a failed build fails here, not silently testing the
    # PyTorch path twice in the tests below
    assert native.em_kernels() is not None
    assert native.em_native_applies(torch.zeros(1))


def test_capsnet_native_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("CAPSNET_NATIVE", "0")
    assert not native.em_native_applies(torch.zeros(1))


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_native_matches_the_written_out_reference(detach, iterations):
    # float64: values and every input's gradient, against Procedure 1 written out
    poses, weight, acts, bu, ba = ins = _inputs(n=4, i=7, j=3)
    got = conv_em_routing(
        poses, weight, acts, bu, ba, iterations=iterations, final_beta=1.0, detach_agreement=detach
    )
    want = reference_em(_votes(poses, weight), acts, bu, ba, iterations, detach)
    torch.testing.assert_close(got, want)
    g = (torch.randn_like(want[0]), torch.randn_like(want[1]))
    torch.testing.assert_close(torch.autograd.grad(got, ins, g), torch.autograd.grad(want, ins, g))


@pytest.mark.usefixtures("native_kernels", "two_threads")
def test_two_threads_sum_the_shared_gradients_like_one():
    # float64: the weight's and the betas' gradients are summed over per-thread accumulators
    ins = _inputs(n=5, i=7, j=3, seed=2)
    out = conv_em_routing(*ins, iterations=3)
    g = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    got = torch.autograd.grad(out, ins, g)
    torch.set_num_threads(1)
    want = torch.autograd.grad(conv_em_routing(*ins, iterations=3), ins, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_native_backward_passes_gradcheck():
    ins = _inputs(n=2, i=5, j=3, seed=1)
    assert torch.autograd.gradcheck(lambda *x: conv_em_routing(*x, iterations=3), ins)


def test_native_float32_matches_the_pytorch_path(monkeypatch):
    torch.manual_seed(0)
    n, i, j = 6, 72, 8
    poses = torch.randn(n, i, 4, 4, requires_grad=True)
    weight = (0.5 * torch.randn(i, j, 4, 4)).requires_grad_()
    acts = torch.rand(n, i, requires_grad=True)
    bu, ba = (0.1 * torch.randn(j)).requires_grad_(), (0.1 * torch.randn(j)).requires_grad_()
    ins = (poses, weight, acts, bu, ba)
    g = (torch.randn(n, j, 16), torch.randn(n, j))

    def run():
        out = conv_em_routing(*ins, iterations=3)
        return out, torch.autograd.grad(out, ins, g)

    (out, grads) = run()
    monkeypatch.setenv("CAPSNET_NATIVE", "0")
    (want, want_grads) = run()
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    for got, ref in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())


@pytest.fixture
def kernels_in(tmp_path, monkeypatch) -> Path:
    """An empty kernels directory: the builds of a test go there, not to the environment's."""
    monkeypatch.setattr(native, "kernels_dir", lambda: tmp_path / "kernels")
    return tmp_path / "kernels"


@pytest.fixture
def fake_load(monkeypatch) -> list[dict]:
    """torch's builder replaced by one that records its arguments and builds nothing."""
    import torch.utils.cpp_extension as cpp

    calls = []

    def load(name, sources, **kwargs):
        calls.append({"name": name, **kwargs})
        return "built"

    monkeypatch.setattr(cpp, "load", load)
    return calls


def test_a_failed_build_warns_once_and_falls_back(tmp_path, kernels_in, caplog):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    with caplog.at_level(logging.WARNING, logger="capsnet.nn.native"):
        assert native._build(broken, "capsnet_em", "EM routing") is None
    *building, failed = [r.getMessage() for r in caplog.records]
    assert len(building) == 2  # with OpenMP, then without
    assert all(m.startswith("building the native EM routing kernel in") for m in building)
    assert "native EM routing unavailable" in failed
    assert "broken.cpp:1:1: error:" in failed


def test_a_compiler_without_openmp_builds_the_kernel_serially(kernels_in, monkeypatch):
    import torch.utils.cpp_extension as cpp

    flags_tried = []

    def load(name, sources, extra_cflags, extra_ldflags, build_directory, verbose):
        flags_tried.append("-fopenmp" in extra_cflags)
        if "-fopenmp" in extra_cflags:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")
        return "built"

    monkeypatch.setattr(cpp, "load", load)
    assert native._build(native.SOURCE, "capsnet_em", "EM routing") == "built"
    assert flags_tried == [True, False]


def test_a_kernel_not_built_yet_is_built_in_the_kernels_directory_with_a_warning(
    kernels_in, fake_load, caplog
):
    with caplog.at_level(logging.INFO, logger="capsnet.nn.native"):
        assert native._build(native.SOURCE, "capsnet_em", "EM routing") == "built"
    [call] = fake_load
    assert call["build_directory"] == str(kernels_in / call["name"])
    [record] = caplog.records
    assert record.levelno == logging.WARNING  # seen without any logging set up
    assert record.getMessage() == (
        f"building the native EM routing kernel in {kernels_in / call['name']} (about a minute)"
    )


def test_a_kernel_built_before_loads_without_a_word(kernels_in, fake_load, caplog):
    native._build(native.SOURCE, "capsnet_em", "EM routing")  # a first process builds it
    name = fake_load[0]["name"]
    (kernels_in / name / f"{name}.so").write_bytes(b"")  # (the real builder's output)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="capsnet.nn.native"):
        assert native._build(native.SOURCE, "capsnet_em", "EM routing") == "built"
    assert fake_load[1]["build_directory"] == str(kernels_in / name)
    assert caplog.records == []


def test_a_build_stopped_midway_leaves_no_lock_that_blocks_the_next(kernels_in, fake_load, caplog):
    native._build(native.SOURCE, "capsnet_em", "EM routing")
    stale = kernels_in / fake_load[0]["name"] / "lock"  # PyTorch's, left by a killed build
    stale.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="capsnet.nn.native"):
        assert native._build(native.SOURCE, "capsnet_em", "EM routing") == "built"
    assert not stale.exists()
    assert f"removing {stale}, left by a build that was stopped" in caplog.text


def test_kernels_are_built_in_the_python_environment_whatever_home_says(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # tests that move HOME build nothing anew
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    assert native.kernels_dir() == tmp_path / "env" / "var" / "cache" / "capsnet-kernels"


def test_an_environment_that_cannot_be_written_builds_in_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "absent"))  # not writable: not there
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert native.kernels_dir() == tmp_path / "home" / ".cache" / "capsnet" / "kernels"


def test_the_build_name_changes_with_what_the_build_depends_on():
    here = native.SOURCE
    name = native._build_name("capsnet_em", here, b"source", ["-O3"])
    assert name == native._build_name("capsnet_em", here, b"source", ["-O3"])
    assert name.startswith("capsnet_em_")
    other_checkout = Path("/elsewhere/src/capsnet/nn/csrc") / here.name
    assert name != native._build_name("capsnet_em", other_checkout, b"source", ["-O3"])
    assert name != native._build_name("capsnet_em", here, b"edited", ["-O3"])
    assert name != native._build_name("capsnet_em", here, b"source", ["-O2"])


def test_the_kernel_takes_the_em_constants_from_the_python_maths():
    header = (native.SOURCE.parent / "em_problem.h").read_text()
    for name in ("MIN_VAR", "MASS_EPS", "STD_EPS"):
        assert f"-DCAPSNET_EM_{name}={getattr(em, name)!r}" in native.FLAGS
        assert f"= CAPSNET_EM_{name}" in header
    assert not re.search(r"\d+e-\d+", header)  # no copy of them in the source
