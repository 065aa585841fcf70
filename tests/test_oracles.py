"""The oracle layer against dense Hessians/Jacobians from ``torch.autograd.functional`` (DESIGN §7).

Every oracle is checked on small float64 problems whose x and y hold several tensors: a custom
task with nonlinear coupling, an LSTM whose parameters are y (reverse-over-reverse through a
recurrent kernel) and a transformer encoder (double backward through attention, which needs the
math SDPA kernel that :func:`bilevel.oracles.second_order` forces).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bilevel import tree
from bilevel.oracles import Batch, OracleCounter, Oracles, second_order

DT = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """The dense references are hundreds of backward passes of tiny kernels: one intra-op
    thread is faster than two and does not slow down badly when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- dense references --------------------------------------------------------------------------
def dense(loss, x, y):
    """Gradient and Hessian of ``loss(x, y)`` w.r.t. the flattened (x, y), split into blocks.

    Returns (g_x, g_y, H_yy, H_xy) with H_xy[i, j] = ∂²loss/∂x_i∂y_j, so that the cross product
    ∂ₓ⟨∇ᵧloss, v⟩ is H_xy @ v.
    """
    nx = tree.numel(x)
    x0, y0 = tree.detach(x), tree.detach(y)

    def flat(z):
        return loss(tree.unflatten(z[:nx], x0), tree.unflatten(z[nx:], y0))

    z = torch.cat([tree.flatten(x0), tree.flatten(y0)])
    with second_order("cpu"):
        g = torch.autograd.functional.jacobian(flat, z)
        h = torch.autograd.functional.hessian(flat, z)
    torch.testing.assert_close(h, h.T)  # sanity of the reference itself
    g, h = g.detach(), h.detach()
    return g[:nx], g[nx:], h[nx:, nx:], h[:nx, nx:]


def sq(p):
    """Σ‖v‖² as a sum of squares (``tree.sq_norm`` goes through a norm, which has no second
    derivative at a zero tensor such as a freshly initialised bias)."""
    return sum((v * v).sum() for v in p.values())


def rand_like(p, gen):
    return {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in p.items()}


def close(actual, expected_flat, rtol=1e-9, atol=1e-10):
    assert not any(t.requires_grad for t in actual.values()), "oracle output must be detached"
    torch.testing.assert_close(tree.flatten(actual), expected_flat, rtol=rtol, atol=atol)


# -- a custom task with several tensors in x and y ----------------------------------------------
class Coupled:
    """f and g with nonlinear coupling between every tensor of x = {a, b} and y = {u, w}."""

    def lower_loss(self, x, y, batch):
        d = batch.data  # (n, 3)
        a, b, u, w = x["a"], x["b"], y["u"], y["w"]
        z = d @ (u * torch.tanh(a))  # (n,)
        loss = nn.functional.softplus(z).mean()
        loss = loss + 0.5 * torch.sum((w @ b) ** 2) + torch.sum(w * w) * torch.exp(0.1 * b.sum())
        loss = loss + u.sum() ** 2 * torch.sin(a).sum() + torch.sum(torch.cos(w) * b)
        loss = loss + torch.sin(a[:2]) @ w @ u[1:] + torch.exp(0.1 * b.sum()) * (u @ u)
        return loss + 0.5 * u @ u * (1 + a @ a)

    def upper_loss(self, x, y, batch):
        d = batch.data
        a, b, u, w = x["a"], x["b"], y["u"], y["w"]
        loss = torch.log1p((d @ u) ** 2).mean() + torch.sum(torch.tanh(w) * b)
        return loss + (a @ a) * u.sum() + torch.sum(w**3) * a[0]


@pytest.fixture
def coupled():
    gen = torch.Generator().manual_seed(0)
    x = {
        "a": torch.randn(3, generator=gen, dtype=DT),
        "b": torch.randn(2, 2, generator=gen, dtype=DT),
    }
    y = {
        "u": torch.randn(3, generator=gen, dtype=DT),
        "w": torch.randn(2, 2, generator=gen, dtype=DT),
    }
    batch = Batch(torch.randn(5, 3, generator=gen, dtype=DT), 5)
    return Coupled(), x, y, batch, gen


def test_grad_f_matches_dense(coupled):
    task, x, y, batch, _ = coupled
    gx, gy, _, _ = dense(lambda a, b: task.upper_loss(a, b, batch), x, y)
    oracles = Oracles(task)
    out = oracles.grad_f(x, y, batch)
    torch.testing.assert_close(out.loss, task.upper_loss(x, y, batch))
    close(out.x, gx)
    close(out.y, gy)
    assert set(out.x) == {"a", "b"} and set(out.y) == {"u", "w"}
    assert out.x["b"].shape == (2, 2) and out.y["w"].shape == (2, 2)
    # wrt_x=False: the x part is zeros, the y part unchanged
    out_y = oracles.grad_f(x, y, batch, wrt_x=False)
    close(out_y.y, gy)
    assert float(tree.norm(out_y.x)) == 0.0
    assert float(gx.norm()) > 0.1  # the zero above is not a coincidence


def test_grad_g_matches_dense(coupled):
    task, x, y, batch, _ = coupled
    gx, gy, _, _ = dense(lambda a, b: task.lower_loss(a, b, batch), x, y)
    oracles = Oracles(task)
    close(oracles.grad_y_g(x, y, batch), gy)
    close(oracles.grad_x_g(x, y, batch), gx)


def test_second_order_oracles_match_dense(coupled):
    task, x, y, batch, gen = coupled
    _, _, h_yy, h_xy = dense(lambda a, b: task.lower_loss(a, b, batch), x, y)
    # real coupling: every (x tensor, y tensor) block of ∇²ₓᵧg is nonzero
    for rows in (slice(0, 3), slice(3, 7)):
        for cols in (slice(0, 3), slice(3, 7)):
            assert float(h_xy[rows, cols].norm()) > 1e-2
    oracles = Oracles(task)
    for _ in range(3):
        v = rand_like(y, gen)
        vf = tree.flatten(v)
        close(oracles.hvp(x, y, v, batch), h_yy @ vf)
        jv = oracles.cross(x, y, v, batch)
        assert set(jv) == set(x) and jv["b"].shape == x["b"].shape  # a vector in x-space
        close(jv, h_xy @ vf)
        hv, jv2 = oracles.hvp_cross(x, y, v, batch)
        close(hv, h_yy @ vf)
        close(jv2, h_xy @ vf)


def test_lower_graph_repeated_products(coupled):
    task, x, y, batch, gen = coupled
    _, gy, h_yy, h_xy = dense(lambda a, b: task.lower_loss(a, b, batch), x, y)
    x_before, y_before = tree.clone(x), tree.clone(y)
    oracles = Oracles(task)
    graph = oracles.lower_graph(x, y, batch)
    # a Neumann-like chain on one graph: v <- v - 0.1 H v, several times
    v = rand_like(y, gen)
    vf = tree.flatten(v)
    for _ in range(4):
        v = tree.add(v, graph.hvp(v), alpha=-0.1)
        vf = vf - 0.1 * (h_yy @ vf)
        close(v, vf)
    close(graph.cross(v), h_xy @ vf)
    hv, jv = graph.hvp_cross(v)
    close(hv, h_yy @ vf)
    close(jv, h_xy @ vf)
    close(graph.grad, gy)
    close(graph.grad, gy)  # reading twice is fine
    # the inputs are untouched
    torch.testing.assert_close(tree.flatten(x), tree.flatten(x_before), rtol=0, atol=0)
    torch.testing.assert_close(tree.flatten(y), tree.flatten(y_before), rtol=0, atol=0)


def test_products_share_one_forward_and_one_reverse_pass(coupled, monkeypatch):
    """A LowerGraph is one forward + one backward; each product (hvp_cross included) is ONE
    more reverse pass through ∇ᵧg, never a new forward."""
    task, x, y, batch, gen = coupled
    forwards = []
    monkeypatch.setattr(
        task, "lower_loss", lambda *a, _f=task.lower_loss: forwards.append(1) or _f(*a)
    )
    grads = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd, "grad", lambda *a, **k: grads.append(1) or real_grad(*a, **k)
    )
    oracles = Oracles(task)
    v = rand_like(y, gen)
    graph = oracles.lower_graph(x, y, batch)
    assert (len(forwards), len(grads)) == (1, 1)
    graph.hvp(v)
    graph.cross(v)
    graph.hvp_cross(v)
    _ = graph.grad
    assert (len(forwards), len(grads)) == (1, 4)
    oracles.hvp_cross(x, y, v, batch)
    assert (len(forwards), len(grads)) == (2, 6)


# -- an LSTM: y = the LSTM's parameters ----------------------------------------------------------
class LSTMTask:
    """g = Σ_i σ(w_i)·½‖h_T,i − t_i‖² + ½λ‖y‖² on inputs scaled by s; x = {w, s}."""

    def __init__(self, gen):
        self.lstm = nn.LSTM(3, 4, batch_first=True).to(DT)
        self.lstm.requires_grad_(False)  # y is substituted by functional_call
        self.inputs = torch.randn(2, 5, 3, generator=gen, dtype=DT)
        self.targets = torch.randn(2, 4, generator=gen, dtype=DT)

    def _last(self, x, y):
        out, _ = functional_call(self.lstm, y, (self.inputs * x["s"],))
        return out[:, -1]

    def lower_loss(self, x, y, batch):
        per_sample = 0.5 * ((self._last(x, y) - self.targets) ** 2).sum(1)
        return torch.sigmoid(x["w"]) @ per_sample + 0.005 * sq(y)

    def upper_loss(self, x, y, batch):
        return (self._last(x, y) ** 2).sum()


def test_lstm_hvp_and_cross_match_dense():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    task = LSTMTask(gen)
    y = {k: v.detach().clone() for k, v in task.lstm.named_parameters()}
    assert tree.numel(y) == 144
    x = {
        "w": torch.randn(2, generator=gen, dtype=DT),
        "s": 1 + 0.3 * torch.randn(3, generator=gen, dtype=DT),
    }
    batch = Batch(None, 2)
    _, gy, h_yy, h_xy = dense(lambda a, b: task.lower_loss(a, b, batch), x, y)
    oracles = Oracles(task)
    v = rand_like(y, gen)
    vf = tree.flatten(v)
    close(oracles.hvp(x, y, v, batch), h_yy @ vf)
    close(oracles.cross(x, y, v, batch), h_xy @ vf)
    graph = oracles.lower_graph(x, y, batch)
    hv, jv = graph.hvp_cross(v)
    close(hv, h_yy @ vf)
    close(jv, h_xy @ vf)
    close(graph.grad, gy)


# -- a transformer encoder: double backward through attention ----------------------------------
class EncoderTask:
    """g = Σ_i σ(w_i)·mean(enc(inputs ⊙ s)_i²) + ½λ‖y‖²; y = the attention parameters."""

    def __init__(self):
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).to(DT)
        self.enc.requires_grad_(False)  # only what functional_call substitutes is differentiated
        self.inputs = torch.randn(2, 5, 8, dtype=DT)

    def y0(self):
        return {k: v.detach().clone() for k, v in self.enc.named_parameters() if "self_attn" in k}

    def lower_loss(self, x, y, batch):
        out = functional_call(self.enc, y, (self.inputs * x["s"],), strict=False)
        per_sample = out.pow(2).mean(dim=(1, 2)) + out[:, :, 0].sum(1)
        return torch.sigmoid(x["w"]) @ per_sample + 0.005 * sq(y)

    def upper_loss(self, x, y, batch):
        return self.lower_loss(x, y, batch)


@pytest.fixture
def encoder():
    torch.manual_seed(2)
    task = EncoderTask()
    gen = torch.Generator().manual_seed(2)
    x = {
        "w": torch.randn(2, generator=gen, dtype=DT),
        "s": 1 + 0.3 * torch.randn(8, generator=gen, dtype=DT),
    }
    return task, x, task.y0(), gen


def test_transformer_hvp_and_cross_match_dense(encoder):
    task, x, y, gen = encoder
    assert tree.numel(y) == 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8
    batch = Batch(None, 2)
    _, gy, h_yy, h_xy = dense(lambda a, b: task.lower_loss(a, b, batch), x, y)
    oracles = Oracles(task)
    v = rand_like(y, gen)
    vf = tree.flatten(v)
    close(oracles.hvp(x, y, v, batch), h_yy @ vf, rtol=1e-8)
    close(oracles.cross(x, y, v, batch), h_xy @ vf, rtol=1e-8)
    hv, jv = oracles.hvp_cross(x, y, v, batch)
    close(hv, h_yy @ vf, rtol=1e-8)
    close(jv, h_xy @ vf, rtol=1e-8)


def test_transformer_double_backward_needs_math_kernel(encoder):
    """Without ``second_order`` the CPU picks a fused attention kernel with no double backward
    (DESIGN §5): this is what the context in the oracles is for."""
    task, x, y, _ = encoder
    yl = tree.leaves(y)
    loss = task.lower_loss(tree.detach(x), yl, Batch(None, 2))
    gy = torch.autograd.grad(loss, list(yl.values()), create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.autograd.grad(gy, list(yl.values()), grad_outputs=[torch.ones_like(t) for t in gy])


# -- counting ------------------------------------------------------------------------------------
def test_counter_records_calls_and_samples(coupled):
    task, x, y, batch, gen = coupled
    small = Batch(batch.data[:2], 2)
    oracles = Oracles(task)
    c = oracles.counter
    v = rand_like(y, gen)

    oracles.grad_f(x, y, batch)
    assert c.calls == {"grad_f": 1} and c.samples == {"grad_f": 5}
    oracles.grad_y_g(x, y, small)
    oracles.grad_x_g(x, y, batch)
    assert c.calls["grad_g"] == 2 and c.samples["grad_g"] == 2 + 5
    oracles.hvp(x, y, v, batch)
    assert c.calls["hvp"] == 1 and c.calls["grad_g"] == 2  # building the graph is not a grad_g
    oracles.cross(x, y, v, small)
    assert c.calls["cross"] == 1 and c.samples["cross"] == 2
    oracles.hvp_cross(x, y, v, batch)  # one hvp and one cross
    assert c.calls["hvp"] == 2 and c.calls["cross"] == 2
    assert c.by_batch_size["cross@2"] == 1 and c.by_batch_size["cross@5"] == 1
    assert c.by_batch_size["grad_g@2"] == 1 and c.by_batch_size["grad_g@5"] == 1

    graph = oracles.lower_graph(x, y, small)
    before = dict(c.calls)
    graph.hvp(v)
    graph.hvp(v)
    graph.cross(v)
    assert c.calls["grad_g"] == before["grad_g"]  # not read yet
    first, second = graph.grad, graph.grad
    torch.testing.assert_close(tree.flatten(first), tree.flatten(second))
    assert c.calls["grad_g"] == before["grad_g"] + 1  # counted once, on first read
    assert c.calls["hvp"] == before["hvp"] + 2 and c.calls["cross"] == before["cross"] + 1

    cols = c.columns()
    assert cols == {
        "calls_grad_f": 1,
        "calls_grad_g": 3,
        "calls_hvp": 4,
        "calls_cross": 3,
        "oracle_calls": 11,
        "samples": 5 + (2 + 5 + 2) + (5 + 5 + 2 + 2) + (2 + 5 + 2),
    }
    restored = OracleCounter()
    restored.load_state_dict(c.state_dict())
    assert restored.columns() == cols and restored.by_batch_size == c.by_batch_size


def test_shared_counter():
    counter = OracleCounter()
    a, b = Oracles(Coupled(), counter), Oracles(Coupled(), counter)
    assert a.counter is b.counter is counter
    counter.add("hvp", 4, n=3)
    assert counter.calls["hvp"] == 3 and counter.samples["hvp"] == 12
    assert counter.by_batch_size["hvp@4"] == 3


# -- second_order --------------------------------------------------------------------------------
@pytest.mark.parametrize("initial", [True, False])
def test_second_order_restores_cudnn(initial):
    saved = torch.backends.cudnn.enabled
    try:
        torch.backends.cudnn.enabled = initial
        with second_order("cuda"):
            assert torch.backends.cudnn.enabled is False
        assert torch.backends.cudnn.enabled is initial
        with pytest.raises(ValueError, match="boom"), second_order(torch.device("cuda")):
            assert torch.backends.cudnn.enabled is False
            raise ValueError("boom")
        assert torch.backends.cudnn.enabled is initial
        # on the CPU (or with no device) cuDNN is left alone
        with second_order("cpu"):
            assert torch.backends.cudnn.enabled is initial
        with second_order():
            assert torch.backends.cudnn.enabled is initial
        assert torch.backends.cudnn.enabled is initial
    finally:
        torch.backends.cudnn.enabled = saved


def test_second_order_turns_mkldnn_off_on_cpu_and_restores_it():
    before = torch._C._get_mkldnn_enabled()
    with second_order("cpu"):
        assert not torch._C._get_mkldnn_enabled()
    assert torch._C._get_mkldnn_enabled() == before
    with pytest.raises(RuntimeError), second_order("cpu"):
        raise RuntimeError("boom")
    assert torch._C._get_mkldnn_enabled() == before
