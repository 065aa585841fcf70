"""The UniBiO synthetic problem (UniBiO, ICLR 2026, §6 and Example 3; spec ACCBO-UNIBIO §2.3).

    g(x, y; ξ) = y^p/p − y·sin x + ξ·y                      (p even; uniformly convex of order p)
    f(x, y; ζ) = sin(y^{p−1}) if |y| ≤ c_p, +1 if y > c_p, −1 if y < −c_p;  + ζ·x
    c_p = (π/2)^{1/(p−1)},  ξ ~ N(0, σ_g²) (noise on ∇ᵧg),  ζ ~ N(0, σ_h²) (noise on the
    hypergradient, through ∇ₓf).

Closed forms: y*(x) = (sin x)^{1/(p−1)} (real odd root), Φ(x) = sin(sin x),
∇Φ(x) = cos x·cos(sin x) (∇Φ(1) = 0.3600). For p > 2 the Hessian (p−1)y^{p−2} vanishes at
y* = 0 (x = 0): the lower level is not strongly convex there.
"""

from __future__ import annotations

import math

import torch

from bilevel.oracles import Batch
from bilevel.tasks.base import Task, gaussian


class UniBiOSynthetic(Task):
    @property
    def uniform_convexity_p(self) -> float:
        """g = y^p/p − y·sin x is uniformly convex of order p (UniBiO Example 3)."""
        return float(self.p)

    def __init__(
        self,
        p: int = 4,
        noise_lower: float = 0.0,
        noise_upper: float = 0.0,
        x0: float = 1.0,
        y0: float = 1.0,
        steps_per_epoch: int = 1,
        dtype: str = "float64",
    ):
        if p < 2 or p % 2:
            raise ValueError(f"task.p must be an even integer >= 2, got {p}")
        self.p, self.noise_lower, self.noise_upper = p, noise_lower, noise_upper
        self.x0, self.y0 = x0, y0
        self.steps_per_epoch = steps_per_epoch
        self.dtype = getattr(torch, dtype)
        self.c_p = (math.pi / 2) ** (1 / (p - 1))

    def init_params(self, generator):
        def scalar(v):
            return torch.tensor([v], dtype=self.dtype, device=self.device)

        return {"x": scalar(self.x0)}, {"y": scalar(self.y0)}

    def lower_loss(self, x, y, batch):
        yv = y["y"]
        loss = yv.pow(self.p) / self.p - yv * torch.sin(x["x"])
        if batch.data["xi"] is not None:
            loss = loss + batch.data["xi"] * yv
        return loss.sum()

    def upper_loss(self, x, y, batch):
        yv = y["y"]
        inside = torch.sin(yv.pow(self.p - 1))
        loss = torch.where(yv.abs() <= self.c_p, inside, torch.sign(yv))
        if batch.data["zeta"] is not None:
            loss = loss + batch.data["zeta"] * x["x"]
        return loss.sum()

    def sample_lower(self, generator):
        xi = (
            None
            if self.noise_lower == 0
            else gaussian((1,), self.noise_lower, generator, self.dtype, self.device)
        )
        return Batch({"xi": xi}, 1)

    def sample_upper(self, generator):
        zeta = (
            None
            if self.noise_upper == 0
            else gaussian((1,), self.noise_upper, generator, self.dtype, self.device)
        )
        return Batch({"zeta": zeta}, 1)

    def y_star(self, x):
        s = torch.sin(x["x"])
        return {"y": torch.sign(s) * s.abs().pow(1.0 / (self.p - 1))}

    def phi(self, x):
        return torch.sin(torch.sin(x["x"])).sum()

    def hypergrad_true(self, x):
        return {"x": torch.cos(x["x"]) * torch.cos(torch.sin(x["x"]))}

    def evaluate(self, x, y):
        with torch.no_grad():
            clean = Batch({"zeta": None}, 0)
            return {"upper_loss": float(self.upper_loss(x, y, clean)), "x": float(x["x"].sum())}
