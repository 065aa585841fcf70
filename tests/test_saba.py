"""SABA (Dagréou et al. 2022, Algorithm 2) with real SAGA memory tables, on the quadratic task in
finite-sum mode (``n_samples`` set: fixed per-sample noise, fixed batches, ``Batch.index``).

Instance: dims 5 × 8, A with spectrum [1, 3], μₓ = 1; gradient noise σ = 1 and Hessian noise
σ_H = 0.5 per sample, 64 samples in 16 batches of 4. Step sizes: the config defaults (spec
ACCBO-UNIBIO §3.5 DC row): ρ = 2e-2, ν = 1e-2, γ = 5e-2.

Documented fact (measured on seeds 0-7): after 1000 iterations SABA's true ‖∇Φ(x)‖ is
5e-6…2.5e-5 of ‖∇Φ(x_0)‖ (linear convergence to the exact solution: the SAGA directions vanish
at the solution), while SOBA with the same step sizes and the same batches stays on a noise floor
(‖∇Φ‖/‖∇Φ(x_0)‖ between 2e-2 and 2e-1 over its last 50 iterations).
"""

from __future__ import annotations

import functools
import io

import pytest
import torch

from bilevel import hypergrad, lower, tree
from bilevel.algorithms import REGISTRY
from bilevel.algorithms.base import load_state_dict, state_dict
from bilevel.algorithms.saba import ORACLES, history_saga, saga
from bilevel.oracles import Batch
from bilevel.problem import Problem
from bilevel.tasks.quadratic import Quadratic

SABA, SOBA = REGISTRY["saba"], REGISTRY["soba"]
RHO, NU, GAMMA = 2e-2, 1e-2, 5e-2  # configs/algorithm/tuned/saba/*
FINITE = dict(noise_std=1.0, hessian_noise_std=0.5, batch_size=4, n_samples=64)


def quadratic(**kw):
    args = dict(dim_x=5, dim_y=8, mu=1.0, cond=3.0, mu_x=1.0)
    args.update(kw)
    return Quadratic(**args)


def make(cls=None, rho=RHO, nu=NU, gamma=GAMMA, **kw):
    return (cls or SABA)(
        lower=lower.SGD(lr=rho, steps=1),
        estimator=hypergrad.ZSGD(lr=nu),
        upper=functools.partial(torch.optim.SGD, lr=gamma),
        **kw,
    )


def start(alg, task, seed=0):
    problem = Problem(task, torch.Generator().manual_seed(seed))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    return problem, alg.init(problem, x, y)


def trajectory(alg, task, steps, seed=0):
    """‖∇Φ(x_t)‖/‖∇Φ(x_0)‖ for t = 1..steps, and the final state."""
    problem, state = start(alg, task, seed)
    g0 = float(
        tree.norm(task.hypergrad_true(task.init_params(torch.Generator().manual_seed(1))[0]))
    )
    out = []
    for _ in range(steps):
        alg.step(problem, state)
        out.append(float(tree.norm(task.hypergrad_true(state.x))) / g0)
    assert state.t == steps
    return out, state


def test_registered():
    assert REGISTRY["saba"] is SABA and SABA.name == "saba"


# -- convergence -------------------------------------------------------------------------------
def test_saba_converges_exactly_where_soba_plateaus():
    task = quadratic(**FINITE)
    saba_err, state = trajectory(make(), task, 1000)
    soba_err, _ = trajectory(make(SOBA), task, 1000)  # same step sizes, same batches
    assert saba_err[-1] < 1e-3  # ≥ 1e3× reduction of the true hypergradient in 1000 steps
    assert min(soba_err[-50:]) > 1e-2  # SOBA: a noise floor
    assert saba_err[-1] < 1e-2 * min(soba_err[-50:])
    # y and z converge too: y → y*(x), z → A⁻¹C(y − c)
    y_star = task.y_star(state.x)["y"]
    assert float((state.y["y"] - y_star).norm()) < 1e-3 * float(y_star.norm())
    z_star = torch.linalg.solve(task.A, task.C @ (state.y["y"] - task.c))
    assert float((state.estimator["z"]["y"] - z_star).norm()) < 1e-3 * float(z_star.norm())


def test_saba_converges_deterministic():
    # n_samples set, no noise: every batch is the full problem
    task = quadratic(batch_size=4, n_samples=16)
    err, _ = trajectory(make(), task, 1000)
    assert err[-1] < 1e-3


def test_full_memory_init_converges():
    err, _ = trajectory(make(init_memory="full"), quadratic(**FINITE), 1000)
    assert err[-1] < 1e-3


def test_history_option_converges_without_noise():
    """The released code's history average (no variance reduction) is still a consistent
    estimator when every batch is the same; on noisy batches it is not exact."""
    err, _ = trajectory(make(memory="history"), quadratic(batch_size=4, n_samples=16), 2000)
    assert err[-1] < 1e-3


# -- memory semantics against hand computations ---------------------------------------------
def test_saga_update_by_hand():
    memory = {
        "table": {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])},
        "mean": {"a": torch.tensor([3.0, 4.0])},
    }
    d = saga(memory, 1, {"a": torch.tensor([7.0, 0.0])})
    # D = new − m[1] + m̄ = [7, 0] − [3, 4] + [3, 4]
    torch.testing.assert_close(d["a"], torch.tensor([7.0, 0.0]))
    torch.testing.assert_close(memory["mean"]["a"], torch.tensor([3 + 4 / 3, 4 - 4 / 3]))
    torch.testing.assert_close(memory["mean"]["a"], memory["table"]["a"].mean(0))
    torch.testing.assert_close(memory["table"]["a"][1], torch.tensor([7.0, 0.0]))
    # rows 0 and 2 untouched; a second call on row 0 uses the updated mean
    d = saga(memory, 0, {"a": torch.tensor([1.0, 1.0])})
    torch.testing.assert_close(d["a"], torch.tensor([1 - 1 + 3 + 4 / 3, 1 - 2 + 4 - 4 / 3]))
    torch.testing.assert_close(memory["mean"]["a"], memory["table"]["a"].mean(0))


@pytest.mark.parametrize("memory", ["saga", "history"])
def test_saba_iterates_by_hand(memory):
    """Eight SABA iterations on a tiny finite sum (2 batches) against an independent
    re-implementation from the closed-form oracles of the quadratic:
        ∇ᵧg_j = (A + diag δ_j)y − (Bx + b) + ξ_j,  ∇²ᵧᵧg_j·z = (A + diag δ_j)z,  ∇²ₓᵧg·z = −Bᵀz,
        ∇ᵧf_j' = C(y − c) + ζ_y,j',  ∇ₓf_j' = μₓx + ζ_x,j'.
    ``saga``: D = new − m[row] + m̄, m̄ += (new − m[row])/n, m[row] = new (row j for the lower
    oracles, j' for the upper ones). ``history`` (length 2): hist gets new (a random slot once
    full, drawn after the batches, oracle by oracle), D = mean(hist) + new − last."""
    task = Quadratic(
        dim_x=2, dim_y=3, cond=3.0, noise_std=1.0, hessian_noise_std=0.5, batch_size=2, n_samples=4
    )
    n, length = task.n_batches, 2
    assert n == 2
    alg = make(rho=0.1, nu=0.2, gamma=0.3, memory=memory, history=length)
    problem, state = start(alg, task)
    x, y = state.x["x"].clone(), state.y["y"].clone()
    z = torch.zeros_like(y)
    dims = {"grad_y_g": 3, "hvp": 3, "cross": 2, "grad_y_f": 3, "grad_x_f": 2}
    table = {k: torch.zeros(n, d, dtype=torch.float64) for k, d in dims.items()}
    mean = {k: torch.zeros(d, dtype=torch.float64) for k, d in dims.items()}
    hist: dict[str, list[torch.Tensor]] = {k: [] for k in dims}
    last = {k: torch.zeros(d, dtype=torch.float64) for k, d in dims.items()}
    close = functools.partial(torch.testing.assert_close, rtol=1e-12, atol=1e-12)
    seen = []
    for _ in range(8):
        # the batches the step will draw: the estimator draws the upper batch, then the lower
        peek = torch.Generator()
        peek.set_state(problem.generator.get_state())
        jp, j = task.sample_upper(peek).index, task.sample_lower(peek).index
        seen.append(j)
        hess = task.A + torch.diag(task.batches["delta"][j])
        raw = {
            "grad_y_g": hess @ y - (task.B @ x + task.b) + task.batches["xi"][j],
            "hvp": hess @ z,
            "cross": -task.B.T @ z,
            "grad_y_f": task.C @ (y - task.c) + task.batches["zeta_y"][jp],
            "grad_x_f": task.mu_x * x + task.batches["zeta_x"][jp],
        }
        d = {}
        for k in ORACLES:  # the implementation's order (history draws its slots in it)
            new = raw[k]
            if memory == "saga":
                row = j if ORACLES[k] == "lower" else jp
                d[k] = new - table[k][row] + mean[k]
                mean[k] = mean[k] + (new - table[k][row]) / n
                table[k][row] = new
            else:
                if len(hist[k]) < length:
                    hist[k].append(new)
                else:
                    hist[k][int(torch.randint(0, length, (1,), generator=peek))] = new
                d[k] = sum(hist[k]) / len(hist[k]) + new - last[k]
                last[k] = new
        y, z, x = (
            y - 0.1 * d["grad_y_g"],
            z - 0.2 * (d["hvp"] - d["grad_y_f"]),
            x - 0.3 * (d["grad_x_f"] - d["cross"]),
        )
        alg.step(problem, state)
        close(state.y["y"], y)
        close(state.estimator["z"]["y"], z)
        close(state.x["x"], x)
        close(state.hypergrad.value["x"], d["grad_x_f"] - d["cross"])
        for k in ORACLES:
            key = "y" if dims[k] == 3 else "x"
            mem = state.extra["memory"][k]
            if memory == "saga":
                close(mem["table"][key], table[k])
                close(mem["mean"][key], mean[k])
            else:
                close(mem["buffer"][key][: len(hist[k])], torch.stack(hist[k]))
    # the case exercises first visits (zero rows) and revisits of a row
    assert set(seen) == {0, 1} and len(seen) > len(set(seen))


def test_history_saga_by_hand():
    """Released-code semantics: hist gets g first (append, then a random slot once full);
    return mean(hist) + g − last (last = 0 on the first call)."""
    problem = Problem(None, torch.Generator().manual_seed(3))
    memory = {
        "buffer": {"a": torch.zeros(2, 1)},
        "sum": {"a": torch.zeros(1)},
        "last": {"a": torch.zeros(1)},
        "count": 0,
    }
    gs = [torch.tensor([v]) for v in (1.0, 2.0, 4.0, 8.0, 16.0)]
    peek = torch.Generator()
    peek.set_state(problem.generator.get_state())
    hist: list[float] = []
    last = 0.0
    for g in gs:
        v = float(g)
        if len(hist) < 2:
            hist.append(v)
        else:
            hist[int(torch.randint(0, 2, (1,), generator=peek))] = v
        expected = sum(hist) / len(hist) + v - last
        last = v
        out = history_saga(memory, {"a": g}, problem)
        torch.testing.assert_close(out["a"], torch.tensor([expected]))
    assert memory["count"] == 2
    assert sorted(memory["buffer"]["a"].flatten().tolist()) == sorted(hist)


def test_full_init_fills_the_tables():
    """init_memory=full: row j holds batch j's oracles at (x_0, y_0, z_0), so the means are the
    full-batch oracles (the per-sample noise is centred: the noise-free problem); one pass costs
    n grad_g, hvp and cross calls and n grad_f calls."""
    task = quadratic(**FINITE)
    n = task.n_batches
    problem, state = start(make(init_memory="full"), task)
    calls = problem.oracles.counter.calls
    assert dict(calls) == {"grad_g": n, "hvp": n, "cross": n, "grad_f": n}
    assert sum(problem.oracles.counter.samples.values()) == 4 * n * FINITE["batch_size"]
    mem = state.extra["memory"]
    x, y = state.x["x"], state.y["y"]
    exact_gy = task.A @ y - (task.B @ x + task.b)
    torch.testing.assert_close(mem["grad_y_g"]["mean"]["y"], exact_gy)
    torch.testing.assert_close(mem["grad_y_f"]["mean"]["y"], task.C @ (y - task.c))
    torch.testing.assert_close(mem["grad_x_f"]["mean"]["x"], task.mu_x * x)
    for j in range(n):
        noisy = exact_gy + task.batches["delta"][j] * y + task.batches["xi"][j]
        torch.testing.assert_close(mem["grad_y_g"]["table"]["y"][j], noisy)
    # z_0 = 0: the products are zero rows
    assert float(mem["hvp"]["table"]["y"].abs().max()) == 0.0


def test_full_init_uses_the_task_fixed_batch_hook():
    """A task exposing fixed_batch(level, index) is read batch by batch, without drawing from
    the run's generator; the tables equal those of the drawing fallback."""
    task = quadratic(**FINITE)
    _, drawn = start(make(init_memory="full"), task)
    keys = {"lower": ("xi", "delta"), "upper": ("zeta_y", "zeta_x")}
    hooked = quadratic(**FINITE)
    hooked.fixed_batch = lambda level, j: Batch(
        {k: hooked.batches[k][j] for k in keys[level]}, hooked.batch_size, index=j
    )
    problem, state = start(make(init_memory="full"), hooked)
    untouched = torch.Generator().manual_seed(0)
    assert torch.equal(problem.generator.get_state(), untouched.get_state())
    for k in ORACLES:
        for part in ("table", "mean"):
            for name, t in drawn.extra["memory"][k][part].items():
                torch.testing.assert_close(state.extra["memory"][k][part][name], t)


# -- errors ------------------------------------------------------------------------------------
def test_error_without_finite_sum():
    task = quadratic(noise_std=0.5, batch_size=4)  # fresh noise every draw: no fixed batches
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"task\.n_samples"):
        make().init(problem, x, y)
    # the history option needs no fixed batches
    alg = make(memory="history")
    state = alg.init(problem, x, y)
    alg.step(problem, state)


def test_error_when_a_batch_has_no_index(monkeypatch):
    task = quadratic(**FINITE)
    alg = make()
    problem, state = start(alg, task)
    sample = task.sample_lower

    monkeypatch.setattr(
        task, "sample_lower", lambda gen: Batch(sample(gen).data, task.batch_size, index=None)
    )
    with pytest.raises(ValueError, match=r"task\.n_samples"):
        alg.step(problem, state)


@pytest.mark.parametrize(
    "alg,match",
    [
        (
            SABA(
                lower=lower.SGD(lr=0.1, steps=2),
                estimator=hypergrad.ZSGD(),
                upper=functools.partial(torch.optim.SGD, lr=0.1),
            ),
            "steps=1",
        ),
        (
            SABA(
                lower=lower.EpochSGD(),
                estimator=hypergrad.ZSGD(),
                upper=functools.partial(torch.optim.SGD, lr=0.1),
            ),
            "sgd or adam",
        ),
        (
            SABA(
                lower=lower.SGD(),
                estimator=hypergrad.Neumann(),
                upper=functools.partial(torch.optim.SGD, lr=0.1),
            ),
            "zsgd",
        ),
        (
            SABA(
                lower=lower.SGD(),
                estimator=hypergrad.ZSGD(z_for_cross="new"),
                upper=functools.partial(torch.optim.SGD, lr=0.1),
            ),
            "z_for_cross",
        ),
        (make(memory="history", init_memory="full"), "memory=saga"),
    ],
)
def test_unsupported_parts_fail_at_init(alg, match):
    task = quadratic(**FINITE)
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=match):
        alg.init(problem, x, y)


# -- oracle counts, determinism, checkpoints -------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"init_memory": "full"}, {"memory": "history"}])
def test_oracle_counts_per_iteration(options):
    """One lower batch (∇ᵧg and both products from one graph) and one upper batch (∇ₓf and ∇ᵧf
    from one backward pass) per iteration, whatever the memory."""
    task = quadratic(**FINITE)
    alg = make(**options)
    problem, state = start(alg, task)
    counter = problem.oracles.counter
    for _ in range(4):
        before = counter.columns()
        alg.step(problem, state)
        after = counter.columns()
        diff = {k: after[k] - before[k] for k in after}
        assert diff == {
            "calls_grad_f": 1,
            "calls_grad_g": 1,
            "calls_hvp": 1,
            "calls_cross": 1,
            "oracle_calls": 4,
            "samples": 4 * FINITE["batch_size"],
        }


def _snapshot(state):
    return state_dict(state)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same(u, v)
    else:
        assert a == b


@pytest.mark.parametrize("options", [{}, {"init_memory": "full"}, {"memory": "history"}])
def test_determinism(options):
    task = quadratic(**FINITE)
    runs = []
    for _ in range(2):
        alg = make(**options)
        problem, state = start(alg, task, seed=5)
        for _ in range(30):
            alg.step(problem, state)
        runs.append(_snapshot(state))
    _assert_same(runs[0], runs[1])
    # and another seed gives another trajectory
    alg = make(**options)
    problem, state = start(alg, task, seed=6)
    for _ in range(30):
        alg.step(problem, state)
    assert not torch.equal(state.x["x"], runs[0]["x"]["x"])


@pytest.mark.parametrize("options", [{}, {"init_memory": "full"}, {"memory": "history"}])
def test_checkpoint_round_trip(options):
    """state_dict → torch.save/load → load_state_dict on a fresh init (another start point,
    another generator), then continuing gives identical iterates and memory."""
    task = quadratic(**FINITE)
    alg = make(**options)
    problem, state = start(alg, task)
    for _ in range(15):  # history: past the buffer length, so random slots are in play
        alg.step(problem, state)
    buffer = io.BytesIO()
    torch.save({"state": state_dict(state), "generator": problem.generator.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh_alg = make(**options)
    fresh_problem = Problem(task, torch.Generator().manual_seed(99))
    x, y = task.init_params(torch.Generator().manual_seed(7))
    fresh = fresh_alg.init(fresh_problem, x, y)
    fresh = load_state_dict(fresh, saved["state"])
    fresh_problem.generator.set_state(saved["generator"])
    _assert_same(_snapshot(fresh), _snapshot(state))

    for _ in range(20):
        alg.step(problem, state)
        fresh_alg.step(fresh_problem, fresh)
        assert torch.equal(fresh.x["x"], state.x["x"])
        assert torch.equal(fresh.y["y"], state.y["y"])
    _assert_same(_snapshot(fresh), _snapshot(state))


# -- config ------------------------------------------------------------------------------------
def test_config_defaults(compose_cfg):
    cfg = compose_cfg("algorithm=saba", "task=quadratic")
    alg = cfg.algorithm
    assert alg._target_ == "bilevel.algorithms.SABA"
    assert (alg.upper.lr, alg.lower.lr, alg.estimator.lr) == (GAMMA, RHO, NU)
    assert (alg.memory, alg.init_memory, alg.history) == ("saga", "zeros", 10)
    assert alg.lower.steps == 1 and alg.estimator.z_for_cross == "old"


def test_trainer_run(tiny_cfg, run_cfg, tmp_path, metrics):
    cfg = tiny_cfg(
        "algorithm=saba",
        "task.n_samples=32",
        "task.batch_size=4",
        "task.noise_std=0.5",
        "trainer.eval_every=10",
    )
    result = run_cfg(cfg, tmp_path / "run")
    assert result.status == "completed"
    table = metrics(tmp_path / "run")
    assert len(table) == 3
    # four oracle calls per iteration (the trainer's warm-up is not counted)
    assert int(table["oracle_calls"].iloc[-1]) == 4 * 20
