"""Strongly convex quadratic bilevel problem with closed forms (the suite's test bed).

    g(x, y; ξ, δ) = ½ yᵀ(A + diag δ)y − yᵀ(Bx + b) + ξᵀy
    f(x, y; ζ)    = ½ (y − c)ᵀC(y − c) + ½ μₓ‖x‖² + ζ_yᵀy + ζ_xᵀx

A has eigenvalues spaced geometrically in [mu, mu·cond]; a batch of size n draws
ξ, ζ ~ N(0, σ²/n) (gradient noise) and δ ~ N(0, σ_H²/n) (Hessian noise), all mean zero, so
E g and E f are the noise-free problem. Closed forms:
    y*(x) = A⁻¹(Bx + b),  Φ(x) = f(x, y*(x)),  ∇Φ(x) = μₓx + BᵀA⁻¹C(y*(x) − c).
The instance (A, B, b, C, c) depends on ``instance_seed`` only, so run seeds vary sampling and
initialization on one fixed problem.

Finite-sum mode (``n_samples`` set): sample i carries fixed noise (ξ_i, δ_i, ζ_i) ~ N(0, σ²),
centred so that the average over i is exactly the noise-free problem (the closed forms hold);
the samples are partitioned once into n_samples / batch_size fixed minibatches, and a batch is
one of them drawn uniformly, with ``Batch.index`` its id (SAGA-type memory keys on it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.oracles import Batch
from bilevel.tasks.base import Task, gaussian
from bilevel.tree import Params


class Quadratic(Task):
    uniform_convexity_p = 2.0  # g is mu-strongly convex in y

    def __init__(
        self,
        dim_x: int = 10,
        dim_y: int = 20,
        mu: float = 1.0,
        cond: float = 10.0,
        mu_x: float = 0.1,
        noise_std: float = 0.0,
        hessian_noise_std: float = 0.0,
        batch_size: int = 1,
        init_scale: float = 1.0,
        steps_per_epoch: int = 100,
        instance_seed: int = 0,
        dtype: str = "float64",
        n_samples: int | None = None,
    ):
        self.dim_x, self.dim_y, self.mu_x = dim_x, dim_y, mu_x
        self.noise_std, self.hessian_noise_std = noise_std, hessian_noise_std
        self.batch_size, self.init_scale = batch_size, init_scale
        self.steps_per_epoch = steps_per_epoch
        self.dtype = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(instance_seed)
        dt = self.dtype

        def spd(eigs: Tensor) -> Tensor:
            q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=dt))
            return q @ torch.diag(eigs) @ q.T

        self.A = spd(
            mu * torch.logspace(0, torch.log10(torch.tensor(cond)).item(), dim_y, dtype=dt)
        )
        self.B = torch.randn(dim_y, dim_x, generator=gen, dtype=dt) / dim_x**0.5
        self.b = torch.randn(dim_y, generator=gen, dtype=dt)
        self.C = spd(torch.linspace(0.5, 2.0, dim_y, dtype=dt))
        self.c = torch.randn(dim_y, generator=gen, dtype=dt)
        self.n_samples = n_samples
        self.batches: dict[str, Tensor] = {}
        if n_samples is not None:
            if n_samples % batch_size:
                raise ValueError(
                    f"task.n_samples={n_samples} must be a multiple of task.batch_size={batch_size}"
                )
            n_batches = n_samples // batch_size
            for name, dim, std in (
                ("xi", dim_y, noise_std),
                ("delta", dim_y, hessian_noise_std),
                ("zeta_y", dim_y, noise_std),
                ("zeta_x", dim_x, noise_std),
            ):
                per_sample = std * torch.randn(n_samples, dim, generator=gen, dtype=dt)
                per_sample -= per_sample.mean(dim=0)
                self.batches[name] = per_sample.view(n_batches, batch_size, dim).mean(dim=1)

    def to(self, device):
        super().to(device)
        for name in ("A", "B", "b", "C", "c"):
            setattr(self, name, getattr(self, name).to(self.device))
        self.batches = {k: v.to(self.device) for k, v in self.batches.items()}
        return self

    def init_params(self, generator):
        def draw(n):
            return (self.init_scale * torch.randn(n, generator=generator, dtype=self.dtype)).to(
                self.device
            )

        return {"x": draw(self.dim_x)}, {"y": draw(self.dim_y)}

    # -- losses --------------------------------------------------------------------------
    def lower_loss(self, x, y, batch):
        yv, xv = y["y"], x["x"]
        quad = 0.5 * yv @ (self.A @ yv)
        if batch.data["delta"] is not None:
            quad = quad + 0.5 * torch.sum(batch.data["delta"] * yv * yv)
        lin = yv @ (self.B @ xv + self.b)
        if batch.data["xi"] is not None:
            lin = lin - batch.data["xi"] @ yv
        return quad - lin

    def upper_loss(self, x, y, batch):
        yv, xv = y["y"], x["x"]
        r = yv - self.c
        loss = 0.5 * r @ (self.C @ r) + 0.5 * self.mu_x * xv @ xv
        if batch.data["zeta_y"] is not None:
            loss = loss + batch.data["zeta_y"] @ yv + batch.data["zeta_x"] @ xv
        return loss

    # -- sampling ------------------------------------------------------------------------
    def _noise(self, n: int, std: float, gen: torch.Generator) -> Tensor | None:
        if std == 0:
            return None
        return gaussian((n,), std / self.batch_size**0.5, gen, self.dtype, self.device)

    def fixed_batch(self, level: str, index: int) -> Batch:
        """Fixed minibatch ``index`` of the finite sum, for ``level`` 'lower' or 'upper'."""
        keys = ("xi", "delta") if level == "lower" else ("zeta_y", "zeta_x")
        return Batch({k: self.batches[k][index] for k in keys}, self.batch_size, index=index)

    def _random_fixed_batch(self, level: str, generator: torch.Generator) -> Batch:
        return self.fixed_batch(
            level, int(torch.randint(self.n_batches, (1,), generator=generator))
        )

    def sample_lower(self, generator):
        if self.n_samples is not None:
            return self._random_fixed_batch("lower", generator)
        data = {
            "xi": self._noise(self.dim_y, self.noise_std, generator),
            "delta": self._noise(self.dim_y, self.hessian_noise_std, generator),
        }
        return Batch(data, self.batch_size)

    def sample_upper(self, generator):
        if self.n_samples is not None:
            return self._random_fixed_batch("upper", generator)
        data = {
            "zeta_y": self._noise(self.dim_y, self.noise_std, generator),
            "zeta_x": self._noise(self.dim_x, self.noise_std, generator),
        }
        return Batch(data, self.batch_size)

    @property
    def n_batches(self) -> int | None:
        """Number of fixed minibatches in finite-sum mode (None otherwise)."""
        return None if self.n_samples is None else self.n_samples // self.batch_size

    def exact_batch(self, level: str) -> Batch:
        """The noise-free (population) batch of either level."""
        keys = ("xi", "delta") if level == "lower" else ("zeta_y", "zeta_x")
        return Batch(dict.fromkeys(keys), 0)

    # -- closed forms ----------------------------------------------------------------------
    def y_star(self, x: Params) -> Params:
        return {"y": torch.linalg.solve(self.A, self.B @ x["x"] + self.b)}

    def phi(self, x: Params) -> Tensor:
        return self.upper_loss(x, self.y_star(x), self.exact_batch("upper"))

    def hypergrad_true(self, x: Params) -> Params:
        ys = self.y_star(x)["y"]
        v = torch.linalg.solve(self.A, self.C @ (ys - self.c))
        return {"x": self.mu_x * x["x"] + self.B.T @ v}

    def evaluate(self, x, y):
        with torch.no_grad():
            return {
                "upper_loss": float(self.upper_loss(x, y, self.exact_batch("upper"))),
                "lower_loss": float(self.lower_loss(x, y, self.exact_batch("lower"))),
            }
