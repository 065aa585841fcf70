"""Hypergradient estimators against closed forms of the quadratic task (DESIGN §7).

On ``Quadratic`` (noise-free unless stated): H = ∇²ᵧᵧg = A, ∇²ₓᵧg·s = ∂ₓ⟨∇ᵧg, s⟩ = −Bᵀs,
∇ₓf = μₓx and ∇ᵧf = b := C(y − c), so an estimator that solves s ≈ A⁻¹b returns
h = μₓx + Bᵀs, and the exact hypergradient at y = y*(x) is ``task.hypergrad_true(x)``.
"""

from __future__ import annotations

import pytest
import torch

from bilevel import tree
from bilevel.hypergrad import ZSGD, ConjugateGradient, Exact, Neumann, Sample
from bilevel.oracles import Batch
from bilevel.problem import Problem
from bilevel.tasks.quadratic import Quadratic

DT = torch.float64
ETA = 0.15  # Neumann step: the spectrum of A is [1, 5], so ‖I − ηA‖ = 1 − η·1 = 0.85


def make(**kw):
    args = dict(dim_x=4, dim_y=6, mu=1.0, cond=5.0, mu_x=0.1)
    args.update(kw)
    task = Quadratic(**args)
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, _ = task.init_params(torch.Generator().manual_seed(1))
    return task, problem, x, task.y_star(x)


def parts(task, x, y):
    """b = ∇ᵧf and h(s) = ∇ₓf − ∇²ₓᵧg·s = μₓx + Bᵀs, in closed form."""
    b = task.C @ (y["y"] - task.c)
    return b, lambda s: task.mu_x * x["x"] + task.B.T @ s


def neumann_vs(task, q, eta=ETA):
    """v_q = (I − ηA)^q b for q = 0..q."""
    m = torch.eye(task.dim_y, dtype=DT) - eta * task.A
    return lambda b: [torch.linalg.matrix_power(m, i) @ b for i in range(q + 1)]


def assert_h(est, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(est.value["x"], expected, rtol=rtol, atol=atol)
    # the parts are consistent: value = ∇ₓf − ∇²ₓᵧg·s
    torch.testing.assert_close(
        est.value["x"], est.grad_x_f["x"] - est.second_order["x"], rtol=1e-12, atol=1e-12
    )


def rel_err(est, true):
    return float(tree.norm(tree.sub(est.value, true)) / tree.norm(true))


def test_closed_form_pieces():
    """The closed forms the other tests use are the oracles' own quantities."""
    task, problem, x, y = make()
    b, _ = parts(task, x, y)
    batch = task.exact_batch("lower")
    fg = problem.oracles.grad_f(x, y, task.exact_batch("upper"))
    torch.testing.assert_close(fg.y["y"], b)
    torch.testing.assert_close(fg.x["x"], task.mu_x * x["x"])
    v = {"y": torch.randn(task.dim_y, dtype=DT)}
    torch.testing.assert_close(problem.oracles.hvp(x, y, v, batch)["y"], task.A @ v["y"])
    torch.testing.assert_close(problem.oracles.cross(x, y, v, batch)["x"], -task.B.T @ v["y"])
    # y* solves ∇ᵧg = 0, and the true hypergradient matches a finite difference of Φ
    assert float(tree.norm(problem.oracles.grad_y_g(x, y, batch))) < 1e-12
    e = torch.zeros(task.dim_x, dtype=DT)
    e[0] = 1e-6
    fd = (task.phi({"x": x["x"] + e}) - task.phi({"x": x["x"] - e})) / 2e-6
    assert abs(float(fd - task.hypergrad_true(x)["x"][0])) < 1e-6


# -- Exact and CG ----------------------------------------------------------------------------
def test_exact_equals_true_hypergradient():
    task, problem, x, y = make()
    est = Exact()(problem, x, y, {})
    assert_h(est, task.hypergrad_true(x)["x"])
    # away from y*: the implicit formula ∇ₓf − ∇²ₓᵧg H⁻¹∇ᵧf at that y
    y_off = {"y": y["y"] + 0.5}
    b, h = parts(task, x, y_off)
    assert_h(Exact()(problem, x, y_off, {}), h(torch.linalg.solve(task.A, b)))
    assert problem.oracles.counter.calls["hvp"] == 2 * task.dim_y


def test_conjugate_gradient():
    task, problem, x, y = make()
    true = task.hypergrad_true(x)
    assert rel_err(ConjugateGradient(iters=50)(problem, x, y, {}), true) <= 1e-6
    # CG stops on its tolerance: at most dim_y products were needed
    assert problem.oracles.counter.calls["hvp"] <= task.dim_y + 1
    # and truncated early it is not exact (the check above has power)
    assert rel_err(ConjugateGradient(iters=2)(problem, x, y, {}), true) > 1e-3
    fresh = ConjugateGradient(iters=50, cross_batch="fresh")
    assert rel_err(fresh(problem, x, y, {}), true) <= 1e-6


# -- Neumann ---------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1, 2, 3, 5, 10])
def test_neumann_textbook_error_is_the_truncation(q):
    """s_Q = η Σ_{q<Q}(I − ηA)^q b = A⁻¹(I − (I − ηA)^Q) b, so the error of h is exactly
    Bᵀ(s_Q − A⁻¹b) = −Bᵀ(I − ηA)^Q A⁻¹b."""
    task, problem, x, y = make()
    b, _ = parts(task, x, y)
    est = Neumann(q=q, lr=ETA)(problem, x, y, {})
    m = torch.eye(task.dim_y, dtype=DT) - ETA * task.A
    expected_err = -task.B.T @ torch.linalg.matrix_power(m, q) @ torch.linalg.solve(task.A, b)
    err = est.value["x"] - task.hypergrad_true(x)["x"]
    torch.testing.assert_close(err, expected_err, rtol=1e-9, atol=1e-12)
    assert problem.oracles.counter.calls["hvp"] == q - 1
    assert problem.oracles.counter.calls["cross"] == 1


def test_neumann_textbook_geometric_rate():
    task, problem, x, y = make()
    true = task.hypergrad_true(x)

    def err(q):
        return float(tree.norm(tree.sub(Neumann(q=q, lr=ETA)(problem, x, y, {}).value, true)))

    errs = [err(q) for q in (1, 5, 10, 20, 40)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    # asymptotically the slowest mode dominates: ratio per term → 1 − η·μ = 0.85
    ratio = (err(60) / err(40)) ** (1 / 20)
    assert abs(ratio - (1 - ETA * 1.0)) < 5e-3


def test_neumann_randomized_is_unbiased():
    """E_k[Qη(I − ηA)^k b], k ~ U{0..Q−1}, is the textbook η Σ_{q<Q}(I − ηA)^q b."""
    q = 4
    task, problem, x, y = make()
    b, h = parts(task, x, y)
    vs = neumann_vs(task, q)(b)
    rnd = Neumann(q=q, lr=ETA, variant="randomized")
    upper, lower = problem.upper_batch(), problem.lower_batch()
    per_k = []
    for k in range(q):
        before = problem.oracles.counter.calls["hvp"]
        est = rnd.estimate(problem, x, y, {}, Sample(upper, [lower], None, k))
        assert problem.oracles.counter.calls["hvp"] - before == k
        assert_h(est, h(q * ETA * vs[k]))
        per_k.append(est.value["x"])
    textbook = Neumann(q=q, lr=ETA)(problem, x, y, {}).value["x"]
    torch.testing.assert_close(torch.stack(per_k).mean(0), textbook, rtol=1e-10, atol=1e-12)
    # the draws are uniform on {0..Q-1}: the empirical mean of 4000 estimates is textbook
    ks = torch.tensor([rnd.draw(problem).k for _ in range(4000)])
    freq = torch.bincount(ks, minlength=q).to(DT) / len(ks)
    assert len(freq) == q and float((freq - 1 / q).abs().max()) < 0.03
    empirical = (freq[:, None] * torch.stack(per_k)).sum(0)
    spread = float(torch.stack(per_k).std(0).norm())
    assert float((empirical - textbook).norm()) < 4 * spread / len(ks) ** 0.5


@pytest.mark.parametrize("variant", ["reference_sum", "ns_a", "ns_b"])
def test_neumann_reference_sums(variant):
    q = 3
    task, problem, x, y = make()
    b, h = parts(task, x, y)
    v = neumann_vs(task, q)(b)
    expected_s = {
        "reference_sum": ETA * sum(v[1:]),  # η Σ_{q=1}^{Q} v_q
        "ns_a": ETA * v[q] + sum(v[1:]),  # η v_Q + Σ_{q=1}^{Q} v_q
        "ns_b": ETA * (v[q] + sum(v[1:])),  # η (v_Q + Σ_{q=1}^{Q} v_q)
    }[variant]
    assert_h(Neumann(q=q, lr=ETA, variant=variant)(problem, x, y, {}), h(expected_s))
    assert problem.oracles.counter.calls["hvp"] == q


@pytest.mark.parametrize(
    "variant, ks", [("reference_rand", range(1, 4)), ("ns_c", range(1, 3))], ids=str
)
def test_neumann_reference_random(variant, ks):
    q = 3
    task, problem, x, y = make()
    b, h = parts(task, x, y)
    v = neumann_vs(task, q)(b)
    est = Neumann(q=q, lr=ETA, variant=variant)
    upper, lower = problem.upper_batch(), problem.lower_batch()
    for k in ks:
        expected = ETA * v[k] if variant == "reference_rand" else ETA * (v[k] + sum(v[1 : k + 1]))
        assert_h(est.estimate(problem, x, y, {}, Sample(upper, [lower], None, k)), h(expected))
    drawn = {est.draw(problem).k for _ in range(300)}
    assert drawn == set(ks)


def test_neumann_independent_hessian_batches():
    """With Hessian noise and ``hessian_batches='independent'`` factor j uses H_j = A + diag δ_j
    of its own batch: v_j = (I − ηH_{j−1}) v_{j−1}; the cross term uses the first batch."""
    q = 4
    task, problem, x, y = make(hessian_noise_std=0.5, batch_size=1)
    b, h = parts(task, x, y)
    est = Neumann(q=q, lr=ETA, hessian_batches="independent")
    sample = est.draw(problem)
    assert len(sample.lower) == q - 1
    deltas = [bt.data["delta"] for bt in sample.lower]
    assert float((deltas[0] - deltas[1]).abs().max()) > 1e-3  # really independent
    v, total = b, b
    for d in deltas:
        v = v - ETA * (task.A + torch.diag(d)) @ v
        total = total + v
    assert_h(est.estimate(problem, x, y, {}, sample), h(ETA * total))
    # the shared variant uses the first batch for every factor
    shared = Neumann(q=q, lr=ETA)
    s_sample = Sample(sample.upper, sample.lower[:1])
    v, total = b, b
    for _ in range(q - 1):
        v = v - ETA * (task.A + torch.diag(deltas[0])) @ v
        total = total + v
    assert_h(shared.estimate(problem, x, y, {}, s_sample), h(ETA * total))


@pytest.mark.parametrize(
    "est, forwards",
    [
        (Neumann(q=5, lr=ETA), 1),  # one Hessian batch: one graph for every product
        (Neumann(q=5, lr=ETA, hessian_batches="independent"), 4),
        (Neumann(q=5, lr=ETA, cross_batch="fresh"), 2),
        (ConjugateGradient(iters=10), 1),
        (ZSGD(lr=ETA), 1),
        (ZSGD(lr=ETA, z_for_cross="new"), 1),
        (Exact(), 1),
    ],
    ids=str,
)
def test_forward_passes_per_estimate(est, forwards, monkeypatch):
    task, problem, x, y = make()
    calls = {"lower": 0, "upper": 0}

    def counting(level, fn):
        def wrapped(*a):
            calls[level] += 1
            return fn(*a)

        return wrapped

    monkeypatch.setattr(task, "lower_loss", counting("lower", task.lower_loss))
    monkeypatch.setattr(task, "upper_loss", counting("upper", task.upper_loss))
    est(problem, x, y, est.init_state(x, y))
    assert calls == {"lower": forwards, "upper": 1}


def test_estimate_repeats_on_a_drawn_sample():
    """``estimate(..., sample=s)`` is deterministic given s (STORM evaluates one sample twice)."""
    task, problem, x, y = make(noise_std=1.0, hessian_noise_std=0.5)
    est = Neumann(q=3, lr=ETA, variant="randomized")
    s = est.draw(problem)
    a = est.estimate(problem, x, y, {}, s).value["x"]
    torch.testing.assert_close(est.estimate(problem, x, y, {}, s).value["x"], a, rtol=0, atol=0)
    others = [est(problem, x, y, {}).value["x"] for _ in range(3)]
    assert all(float((o - a).abs().max()) > 1e-6 for o in others)


# -- z-SGD (SOBA family) ---------------------------------------------------------------------
def test_zsgd_first_steps_and_fixed_point():
    task, problem, x, y = make()
    b, h = parts(task, x, y)
    nu = 0.3
    est = ZSGD(lr=nu)
    state = est.init_state(x, y)
    z = torch.zeros(task.dim_y, dtype=DT)
    assert float(tree.norm(state["z"])) == 0.0
    for _ in range(3):  # 'old': h at z_t, then z_{t+1} = z_t − ν(Az_t − b)
        assert_h(est(problem, x, y, state), h(z))
        z = z - nu * (task.A @ z - b)
        torch.testing.assert_close(state["z"]["y"], z, rtol=1e-12, atol=1e-14)
    for _ in range(150):
        est(problem, x, y, state)
    torch.testing.assert_close(state["z"]["y"], torch.linalg.solve(task.A, b))
    assert rel_err(est(problem, x, y, state), task.hypergrad_true(x)) < 1e-10
    c = problem.oracles.counter.calls
    assert c["hvp"] == c["cross"] == c["grad_f"] == 154 and c["grad_g"] == 0

    # 'new': the cross term at the updated z (one more product on the same batch)
    new = ZSGD(lr=nu, z_for_cross="new")
    state = new.init_state(x, y)
    assert_h(new(problem, x, y, state), h(nu * b))


def test_zsgd_ball_projection():
    task, problem, x, y = make()
    b, h = parts(task, x, y)
    nu = 0.3
    radius = 0.2 * float(torch.linalg.solve(task.A, b).norm())  # the fixed point is outside
    est = ZSGD(lr=nu, radius=radius)
    state = est.init_state(x, y)
    z = torch.zeros(task.dim_y, dtype=DT)
    active = 0
    for _ in range(40):
        est(problem, x, y, state)
        u = z - nu * (task.A @ z - b)
        active += float(u.norm()) > radius
        z = u * min(1.0, radius / float(u.norm()))
        torch.testing.assert_close(state["z"]["y"], z, rtol=1e-10, atol=1e-12)
        assert float(state["z"]["y"].norm()) <= radius * (1 + 1e-9)
    assert active > 30  # the projection really acted
    # a ball that contains every iterate changes nothing
    free, big = ZSGD(lr=nu), ZSGD(lr=nu, radius=1e6)
    s_free, s_big = free.init_state(x, y), big.init_state(x, y)
    for _ in range(5):
        free(problem, x, y, s_free)
        big(problem, x, y, s_big)
    torch.testing.assert_close(s_big["z"]["y"], s_free["z"]["y"])


def test_zsgd_xavier_init():
    task, _, x, y = make()
    torch.manual_seed(0)
    z = ZSGD(init="xavier").init_state(x, y)["z"]["y"]
    bound = (6.0 / (task.dim_y + 1)) ** 0.5
    assert float(z.abs().max()) <= bound and float(z.abs().min()) > 0


# -- UniBiO's change of variable (LLUC) ------------------------------------------------------
class PowerTask:
    """g = Σ y⁴/4 + ½yᵀMy − yᵀ(Bx + e), f = ½‖y − c‖² + ½‖x‖², y = {a: 2, b: 1}.

    H = ∇²ᵧᵧg = diag(3y²) + M is NOT diagonal, so D = 3y² (UniBiO's D for p = 4) and H do not
    commute and the two sides of the preconditioning converge to different limits."""

    def __init__(self):
        gen = torch.Generator().manual_seed(3)
        g = torch.randn(3, 3, generator=gen, dtype=DT)
        self.M = g @ g.T + 0.2 * torch.eye(3, dtype=DT)
        self.B = torch.randn(3, 2, generator=gen, dtype=DT)
        self.e = torch.randn(3, generator=gen, dtype=DT)
        self.c = torch.randn(3, generator=gen, dtype=DT)

    @staticmethod
    def flat(y):
        return torch.cat([y["a"], y["b"]])

    def lower_loss(self, x, y, batch):
        v = self.flat(y)
        return (v**4).sum() / 4 + 0.5 * v @ self.M @ v - v @ (self.B @ x["x"] + self.e)

    def upper_loss(self, x, y, batch):
        r = self.flat(y) - self.c
        return 0.5 * r @ r + 0.5 * x["x"] @ x["x"]

    def sample_lower(self, gen):
        return Batch(None, 1)

    def sample_upper(self, gen):
        return Batch(None, 1)


@pytest.fixture
def lluc():
    task = PowerTask()
    problem = Problem(task, torch.Generator().manual_seed(0))
    x = {"x": torch.tensor([0.3, -0.7], dtype=DT)}
    y = {"a": torch.tensor([0.5, 1.5], dtype=DT), "b": torch.tensor([-1.0], dtype=DT)}
    yv = task.flat(y)
    hess = torch.diag(3 * yv**2) + task.M
    d = 3 * yv**2 + 1e-12
    b = yv - task.c

    def h(s):  # ∇ₓf − ∇²ₓᵧg·s with ∇²ₓᵧg·s = −Bᵀs
        return x["x"] + task.B.T @ s

    p_eigs = torch.linalg.eigvals(torch.diag(1 / d) @ hess).real
    eta = float(1 / p_eigs.max())
    return problem, x, y, hess, d, b, h, eta


def test_lluc_correct_side_converges_to_inverse_hessian(lluc):
    problem, x, y, hess, d, b, h, eta = lluc
    est = Neumann(q=400, lr=eta, lluc_p=4)(problem, x, y, {})
    assert_h(est, h(torch.linalg.solve(hess, b)), rtol=1e-8, atol=1e-10)
    # finite Q: s = η Σ_{q<Q} (I − ηD⁻¹H)^q D⁻¹b exactly
    m = torch.eye(3, dtype=DT) - eta * torch.diag(1 / d) @ hess
    s3 = eta * sum(torch.linalg.matrix_power(m, i) @ (b / d) for i in range(3))
    assert_h(Neumann(q=3, lr=eta, lluc_p=4)(problem, x, y, {}), h(s3))


def test_lluc_reference_side_converges_to_d_hinv_dinv(lluc):
    problem, x, y, hess, d, b, h, eta = lluc
    est = Neumann(q=400, lr=eta, lluc_p=4, lluc_side="reference")(problem, x, y, {})
    limit = torch.diag(d) @ torch.linalg.solve(hess, b / d)
    assert_h(est, h(limit), rtol=1e-8, atol=1e-10)
    right = h(torch.linalg.solve(hess, b)) - x["x"]  # −∇²ₓᵧg·H⁻¹b of the correct side
    wrong = -est.second_order["x"]
    assert float((wrong - right).norm()) > 0.1 * float(right.norm())  # Q13 matters
    m = torch.eye(3, dtype=DT) - eta * hess @ torch.diag(1 / d)
    s3 = eta * sum(torch.linalg.matrix_power(m, i) @ (b / d) for i in range(3))
    est3 = Neumann(q=3, lr=eta, lluc_p=4, lluc_side="reference")(problem, x, y, {})
    assert_h(est3, h(s3))


def test_lluc_p2_is_plain_neumann(lluc):
    problem, x, y, *_ = lluc
    plain = Neumann(q=5, lr=0.1)(problem, x, y, {}).value["x"]
    p2 = Neumann(q=5, lr=0.1, lluc_p=2)(problem, x, y, {}).value["x"]
    torch.testing.assert_close(p2, plain, rtol=0, atol=0)
