"""Deep AUC maximisation on the real Sentiment140 files (shared/data), small scale: the closed
form α*(x), the imbalanced split, the global ROC-AUC, and short runs of three algorithms whose
networks' AUCs must rise (they cannot with x frozen)."""

from __future__ import annotations

import math

import pytest
import text_tasks
import torch
from text_tasks import needs_data

from bilevel.app.config import compose
from bilevel.data import positive_ratio
from bilevel.oracles import Batch
from bilevel.tasks.auc import roc_auc

SMALL = ["task=auc", "scale.max_train=1000", "task.eval_size=500", "trainer.progress=false"]
# α is one scalar with ∇²g = 2p(1−p) = 0.32: lower and Neumann steps of 1.0 (not the DC rows'
# 1e-2 / 2e-3, tuned for a network as the lower variable).
SCALAR_LR = ["algorithm.lower.lr=1.0"]


def build(*overrides: str):
    return text_tasks.build(*SMALL, *overrides)


def lower_error(task, algo, state) -> float:
    alpha = algo.lower_point(state)["alpha"].detach()
    return abs(float(alpha - task.y_star(state.x)["alpha"]))


def test_roc_auc_is_the_pairwise_probability():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (80,), generator=gen).float()  # many ties
    labels = (torch.rand(80, generator=gen) < 0.7).long()
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert roc_auc(scores, labels) == pytest.approx(float(brute.mean()))
    assert roc_auc(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([1, 0, 1])) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 0])) == 0.0
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))


@needs_data
@pytest.mark.parametrize("imratio", [0.8, 0.9])
def test_training_split_is_imbalanced_and_p_is_its_positive_ratio(imratio):
    task, _, _, _ = build("algorithm=stocbio", f"task.imratio={imratio}")
    assert positive_ratio(task.train.labels) == pytest.approx(imratio, abs=1e-3)
    assert positive_ratio(task.val.labels) == pytest.approx(imratio, abs=1e-3)
    assert task.p == positive_ratio(task.train.labels)  # the whole split, not a batch (Q23)
    rows = set(task.train.tensors["index"].tolist())
    assert rows.isdisjoint(task.val.tensors["index"].tolist())
    assert task.n_train > 200 and task.steps_per_epoch == math.ceil(task.n_train / 32)


@needs_data
def test_alpha_star_is_the_minimiser_of_g():
    task, _, _, state = build("algorithm=stocbio")
    x = {k: v.detach() for k, v in state.x.items()}
    n = len(task.train)
    whole = Batch(task.train.gather(torch.arange(n)), n)
    alpha = torch.zeros((), requires_grad=True)
    for _ in range(200):  # gradient descent on the strongly convex g(x, ·) over the split
        (grad,) = torch.autograd.grad(task.lower_loss(x, {"alpha": alpha}, whole), [alpha])
        alpha = (alpha - 1.0 * grad).detach().requires_grad_()
    star = task.y_star(x)["alpha"]
    assert float(star) == pytest.approx(float(alpha.detach()), abs=1e-5)  # measured: 0.99924 both
    # on the training split (positive fraction exactly p): α* = m + E[h | neg] − E[h | pos]
    with torch.no_grad():
        h, y = task.scores(x, whole.data), whole.data["label"]
    assert float(star) == pytest.approx(float(1.0 + h[y == 0].mean() - h[y == 1].mean()), abs=1e-5)
    # ∇²_αα g = 2p(1−p), and ∇_α g vanishes at α*
    g = lambda a: task.lower_loss(x, {"alpha": a}, whole)  # noqa: E731
    hess = torch.autograd.functional.hessian(g, star.clone())
    assert float(hess) == pytest.approx(2 * task.p * (1 - task.p), rel=1e-5)
    at_star = star.clone().requires_grad_()
    (grad,) = torch.autograd.grad(g(at_star), [at_star])
    assert abs(float(grad)) < 1e-5


# The network's AUCs depend on x alone (y = α only enters the losses): with x frozen (upper step
# 0) every AUC stays at its initial value exactly, so a rise is the upper level's doing. 40 steps
# on a pool of 4000 tweets (halved into train / val, each imbalanced to 0.8); AUCs on 500 rows
# of each half (val: the data f is trained on; train: held out from f) and on the 359 test
# tweets. Every step size is explicit (the config defaults are the papers' and may change).
AUC_RUN = ["scale.max_train=4000", *SCALAR_LR]
AUC_ALGORITHMS = {
    # SGD on the network needs a large step at this scale (the DC rows' 1e-2 barely moves it)
    "stocbio": [
        "model=rnn",
        "algorithm.upper.lr=1.0",
        "algorithm.lower.steps=3",
        "algorithm.estimator.q=3",
    ],
    "ma_soba": [
        "model=rnn",
        "algorithm.upper.lr=1.0",
        "algorithm.upper.momentum=0.9",
        "algorithm.lower.steps=1",
    ],
    "adambo": [
        "model=transformer",
        "algorithm.upper.lr=0.002",
        "algorithm.lower.steps=1",
        "algorithm.estimator.q=3",
    ],
}
# Neumann / z steps of 1 for the scalar α (∇²g = 2p(1−p) = 0.32), as the lower step
ESTIMATOR_LR = ["algorithm.estimator.lr=1.0"]


@needs_data
@pytest.mark.parametrize("algorithm", list(AUC_ALGORITHMS))
def test_three_algorithms_raise_the_networks_auc_and_track_alpha_star(algorithm):
    # measured (40 steps, run seeds 0 (this test) / 1 / 2): AUC gain over the initial (= frozen-x)
    # value, and |α − α*(x)| at the end (from 1.0; adambo from 0.42 after its warm start)
    # stocbio val +0.079 / +0.063 / +0.115  test +0.068 / +0.076 / +0.090  0.040 / 0.016 / 0.157
    # ma_soba val +0.117 / +0.090 / +0.116  test +0.061 / +0.043 / +0.055  0.007 / 0.041 / 0.174
    # adambo  val +0.273 / +0.213 / +0.403  test +0.156 / +0.132 / +0.184  0.001 / 0.004 / 0.002
    # (train, held out from f: +0.04 to +0.19, but adambo -0.045 on seed 1: not asserted)
    task, algo, problem, state = build(
        f"algorithm={algorithm}", *AUC_RUN, *AUC_ALGORITHMS[algorithm], *ESTIMATOR_LR
    )
    first = task.evaluate(state.x, algo.lower_point(state))
    err0 = lower_error(task, algo, state)
    for _ in range(40):
        state = algo.step(problem, state)
    last = task.evaluate(state.x, algo.lower_point(state))
    assert all(math.isfinite(v) for v in last.values()), last
    assert {"train_auc", "val_auc", "test_auc", "upper_loss", "lower_loss"} <= set(last)
    assert last["val_auc"] > first["val_auc"] + 0.05, (first, last)
    assert last["test_auc"] > first["test_auc"] + 0.03, (first, last)
    # ... while α keeps tracking α*(x) of the moving x
    assert lower_error(task, algo, state) < 0.5 * err0, (err0, last)


@needs_data
def test_trainer_logs_lower_error_without_phi(run_cfg, tmp_path):
    cfg = compose([*SMALL, "algorithm=stocbio", *SCALAR_LR, "trainer.max_steps=6"])
    cfg.trainer.eval_every = 3
    result = run_cfg(cfg, tmp_path)
    errors = [row["lower_error"] for row in result.rows]
    assert len(errors) >= 2 and errors[-1] < errors[0]
    assert all("phi" not in row and "true_hypergrad_norm" not in row for row in result.rows)
