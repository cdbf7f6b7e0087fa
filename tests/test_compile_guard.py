"""The compile guard: a compiled path that disagrees with eager falls back (compile: auto) or
stops (compile: true), naming the path. The compiler is replaced by fakes that return NaN or
wrong values, so these tests need no C++ build; tests/test_compiled_networks.py compiles the
embedded default's real networks."""

import pytest
import torch

from hkd import compile_guard
from hkd.compile_guard import CompileDisagrees, maybe_compile


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        return x * self.weight


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: right outputs whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def fake_compiler(monkeypatch, broken):
    """torch.compile replaced by ``broken(module)``, a callable standing in for the compiled module."""
    monkeypatch.setattr(torch, "compile", lambda module: broken(module))


FAKES = {
    "nan output": lambda m: lambda x: m(x) * float("nan"),
    "wrong output": lambda m: lambda x: m(x) * 1.5,
    "nan gradients, right output": lambda m: lambda x: NaNGradient.apply(m(x)),
}


@pytest.fixture(autouse=True)
def fresh_decisions():
    compile_guard.reset_decisions()
    yield
    compile_guard.reset_decisions()


@pytest.mark.parametrize("fake", FAKES)
def test_auto_falls_back_to_eager(monkeypatch, capsys, fake):
    fake_compiler(monkeypatch, FAKES[fake])
    net, x = Affine(), torch.randn(4, 8)
    run = maybe_compile(net, "auto", "the test path")
    out = run(x)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    out.sum().backward()
    assert torch.isfinite(net.weight.grad).all()
    err = capsys.readouterr().err
    assert "the test path" in err and "running it eagerly" in err
    d = compile_guard.decisions()["the test path"]
    assert d["compiled"] is False and d["mode"] == "auto" and d["reason"]
    torch.testing.assert_close(run(x), net(x), rtol=0, atol=0)  # and stays eager


@pytest.mark.parametrize("fake", FAKES)
def test_true_stops_naming_path_and_key(monkeypatch, fake):
    fake_compiler(monkeypatch, FAKES[fake])
    with pytest.raises(CompileDisagrees, match=r"the test path.*'compile: (auto|false)'"):
        maybe_compile(Affine(), True, "the test path")(torch.randn(4, 8))


def test_wrong_gradient_is_reported_as_gradients(monkeypatch):
    fake_compiler(monkeypatch, FAKES["nan gradients, right output"])
    with pytest.raises(CompileDisagrees, match="non-finite gradients"):
        maybe_compile(Affine(), True, "p")(torch.randn(4, 8))


def test_inference_checks_outputs_only(monkeypatch):
    """Without grad the NaN-gradient fake computes the right outputs, so it is accepted."""
    fake_compiler(monkeypatch, FAKES["nan gradients, right output"])
    net = Affine()
    with torch.no_grad():
        out = maybe_compile(net, True, "p")(torch.randn(4, 8))
    assert torch.isfinite(out).all()
    d = compile_guard.decisions()["p"]
    assert d["compiled"] and d["checks"][0]["ok"] and not d["checks"][0]["gradients"]


def test_agreeing_compiled_path_is_kept(monkeypatch):
    fake_compiler(monkeypatch, lambda m: lambda x: m(x) * (1 + 1e-5))
    run = maybe_compile(Affine(), True, "p")
    out = run(torch.ones(2, 8))
    torch.testing.assert_close(out, torch.linspace(0.5, 1.5, 8).expand(2, 8) * (1 + 1e-5))
    d = compile_guard.decisions()["p"]
    assert d["compiled"] and d["checks"][0]["max_rel_diff_outputs"] == pytest.approx(1e-5, rel=1e-2)


def test_later_non_finite_output_falls_back(monkeypatch, capsys):
    """After an accepted first call, a compiled output made without grad that is non-finite
    where eager is finite switches the path to eager."""
    calls = {"n": 0}

    def late_nan(m):
        def run(x):
            calls["n"] += 1
            return m(x) * (float("nan") if calls["n"] >= 3 else 1.0)

        return run

    fake_compiler(monkeypatch, late_nan)
    net = Affine()
    run = maybe_compile(net, "auto", "p")
    with torch.no_grad():
        for _ in range(3):
            assert torch.isfinite(run(torch.randn(2, 8))).all()
    assert "non-finite" in capsys.readouterr().err and not compile_guard.decisions()["p"]["compiled"]


def test_new_shape_is_checked_again(monkeypatch):
    fake_compiler(monkeypatch, lambda m: lambda x: m(x) * (1.5 if x.shape[0] == 3 else 1.0))
    run = maybe_compile(Affine(), True, "p")
    with torch.no_grad():
        run(torch.randn(2, 8))
        with pytest.raises(CompileDisagrees, match="outputs differ"):
            run(torch.randn(3, 8))


def test_compile_failure(monkeypatch):
    def failing(m):
        def run(x):
            raise RuntimeError("C++ compiler not found")

        return run

    fake_compiler(monkeypatch, failing)
    with pytest.raises(CompileDisagrees, match="compiling failed.*C\\+\\+ compiler not found"):
        maybe_compile(Affine(), True, "p")(torch.randn(2, 8))
    net, x = Affine(), torch.randn(2, 8)
    torch.testing.assert_close(maybe_compile(net, "auto", "q")(x), net(x))
    assert "compiling failed" in compile_guard.decisions()["q"]["reason"]


def test_module_errors_are_not_compile_errors(monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("broken network")

    fake_compiler(monkeypatch, lambda m: m)
    with pytest.raises(ValueError, match="broken network"):
        maybe_compile(Broken(), "auto", "p")(torch.zeros(2))


def test_false_is_the_module_and_bad_mode_is_refused():
    net = Affine()
    assert maybe_compile(net, False, "p") is net
    assert compile_guard.decisions()["p"] == {"mode": "false", "compiled": False, "reason": "compile: false"}
    with pytest.raises(ValueError, match="'compile'"):
        maybe_compile(net, "yes", "p")


def test_dropout_is_off_during_the_check(monkeypatch):
    """Two graphs draw different dropout masks; the check compares them without dropout."""
    seen = []

    class Dropping(Affine):
        def __init__(self):
            super().__init__()
            self.dropout = 0.5

        def forward(self, x):
            seen.append(self.dropout)
            return torch.nn.functional.dropout(super().forward(x), self.dropout, self.training)

    fake_compiler(monkeypatch, lambda m: m)
    net = Dropping()
    maybe_compile(net, True, "p")(torch.randn(2, 8))
    assert seen == [0.0, 0.0, 0.5] and net.dropout == 0.5


def test_relative_difference_floor():
    """A gradient that is ~0 in both graphs is not a disagreement; a large one is judged
    relative to its own size."""
    eager = {"gradients": [torch.ones(100), torch.full((100,), 1e-9)]}
    compiled = {"gradients": [torch.ones(100) * 1.01, torch.full((100,), 3e-9)]}
    report = compile_guard.compare(compiled, eager, 0.05)
    assert report["ok"] and report["max_rel_diff_gradients"] == pytest.approx(0.01, rel=1e-3)
    compiled["gradients"][0] = torch.ones(100) * 1.2
    assert not compile_guard.compare(compiled, eager, 0.05)["ok"]


def test_non_finite_message_names_seeds_path_and_key():
    compile_guard.reset_decisions()
    msg = compile_guard.non_finite_message(
        "teacher states",
        [10, 11, 12],
        [False, True, True],
        "the teacher denoiser",
        "results/x/logs/trajectories-00000.log",
    )
    assert "2 of 3 seeds in 10..12 (11, 12)" in msg and "compile: false" in msg
    assert "results/x/logs/trajectories-00000.log" in msg and "ran eagerly" in msg


def wrong_from_third_invocation():
    """A fake compiler whose compiled result is right twice, then 1.5x too large."""
    invocations = {"n": 0}

    def compiler(m):
        def run(x):
            invocations["n"] += 1
            return m(x) * (1.5 if invocations["n"] >= 3 else 1.0)

        return run

    return compiler


def test_rechecked_at_calls_10_and_100(monkeypatch):
    """A defect that appears later (here: the compiled result turns wrong from its third
    invocation) is caught at the graph's 10th call, and the path goes eager."""
    fake_compiler(monkeypatch, wrong_from_third_invocation())
    net = Affine()
    run = maybe_compile(net, "auto", "p")
    x = torch.ones(2, 8)
    with torch.no_grad():
        outs = [run(x) for _ in range(12)]
    assert [bool(torch.equal(o, net(x))) for o in outs] == [True] + [False] * 8 + [True] * 3
    d = compile_guard.decisions()["p"]
    assert len(d["checks"]) == 2 and not d["compiled"]


def test_distrust_checks_the_next_call(monkeypatch):
    fake_compiler(monkeypatch, wrong_from_third_invocation())
    net, x = Affine(), torch.ones(2, 8)
    run = maybe_compile(net, True, "p")
    with torch.no_grad():
        run(x)
        run(x)
        run.distrust()
        with pytest.raises(CompileDisagrees):
            run(x)


def test_a_path_never_called_is_not_listed(monkeypatch):
    fake_compiler(monkeypatch, lambda m: m)
    maybe_compile(Affine(), "auto", "unused")
    assert "unused" not in compile_guard.decisions()


def test_a_later_build_of_the_same_path_replaces_its_entry(monkeypatch):
    fake_compiler(monkeypatch, lambda m: m)
    net = Affine()
    maybe_compile(net, False, "p")
    maybe_compile(net, "auto", "p")(torch.ones(2, 8))
    d = compile_guard.decisions()["p"]
    assert d["mode"] == "auto" and d["compiled"] and len(d["checks"]) == 1


def test_hkd_training_has_its_own_compile_setting(repo):
    """`hkd_compile` null follows `compile`; set, it decides HKD training alone. The embedded
    default trains HKD eagerly (docs/time-and-cost.md) and compiles the teacher's sampling."""
    from hkd.compile_guard import hkd_compile
    from hkd.config import load_config

    assert hkd_compile({"compile": "auto", "hkd_compile": None}) == "auto"
    assert hkd_compile({"compile": "auto", "hkd_compile": False}) is False
    assert hkd_compile({"compile": False, "hkd_compile": True}) is True
    default = load_config(repo / "configs" / "default.yaml")
    assert (default["compile"], hkd_compile(default)) == ("auto", False)
    assert hkd_compile(load_config(repo / "configs" / "cifar10.yaml")) == "auto"
