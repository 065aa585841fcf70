#!/usr/bin/env bash
# The tuning runs behind configs/settings/quadratic*/ (issue #8): one bilevel-tune call per
# algorithm on the suite's strongly convex quadratic, replicated over the noise-free and the
# noisy problem (task.noise_std=0,0.5), seed 0, scored by the log10 true ‖∇Φ‖ averaged over the
# last 3 evaluations (bilevel/app/tune.py).
# Neumann estimators use Q = 30 terms of step 0.15 < 2/L (L = 10): truncation error
# (1 − 0.15)^30 < 1% along the smallest eigenvalue of ∇²ᵧᵧg.
# Usage: bash scripts/tune_synthetic.sh [ALGORITHM ...]   (default: all below; ~1 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
# The targets of issue #8 as requirements: from ‖∇Φ(x_0)‖ = 4.42 (seed 0), at most 0.0442 (100x)
# noise-free and 0.442 (10x) with noise; among the points meeting both, the best mean.
COMMON=(seed=0 task.noise_std=0,0.5 --replicate task.noise_std --log --aggregate mean
  --require task.noise_std=0:0.0442 --require task.noise_std=0.5:0.442 --write
  --jobs "${JOBS:-1}")
NEUMANN=(algorithm.estimator.q=30 algorithm.estimator.lr=0.15)
tune() { echo "== $*"; bilevel-tune "$@" "${COMMON[@]}" || echo "== FAILED: $*"; }
all=(soba ma_soba saba stocbio adambo vr_adambo accbo sustain vrbo f2sa bo_rep slip ttsa unibio)
for a in "${@:-${all[@]}}"; do
  case $a in
    soba|ma_soba)
      tune algorithm=$a task=quadratic algorithm.upper.lr=0.02,0.05,0.1 \
        algorithm.lower.lr=0.05,0.15 algorithm.estimator.lr=0.05,0.15 ;;
    saba)
      tune algorithm=saba task=quadratic_finite_sum algorithm.upper.lr=0.02,0.05,0.1 \
        algorithm.lower.lr=0.05,0.15 algorithm.estimator.lr=0.05,0.15 ;;
    stocbio)
      tune algorithm=stocbio task=quadratic "${NEUMANN[@]}" algorithm.upper.lr=0.03,0.1,0.3,1.0 \
        algorithm.lower.lr=0.05,0.15 ;;
    adambo)
      tune algorithm=$a task=quadratic "${NEUMANN[@]}" algorithm.upper.lr=0.01,0.03,0.1 \
        algorithm.lower.lr=0.05,0.15 ;;
    vr_adambo)  # STORM on a randomized-truncation estimate: its weight β matters
      tune algorithm=$a task=quadratic "${NEUMANN[@]}" algorithm.upper.lr=0.003,0.01,0.03 \
        algorithm.lower.lr=0.05,0.15 algorithm.beta=0.9,0.99 ;;
    accbo)
      tune algorithm=accbo task=quadratic "${NEUMANN[@]}" algorithm.upper.lr=0.01,0.03,0.1 \
        algorithm.upper_decay=0,0.5 algorithm.lower.lr=0.15 algorithm.beta=0.9,0.99 ;;
    sustain)  # d = h + (1 − η)(d_prev − h'): η small = strong variance reduction
      tune algorithm=$a task=quadratic "${NEUMANN[@]}" algorithm.upper.lr=0.01,0.03,0.1,0.3 \
        algorithm.y_lr=0.05,0.15 algorithm.eta=0.001,0.01,0.1,0.9 ;;
    vrbo)
      tune algorithm=$a task=quadratic "${NEUMANN[@]}" algorithm.upper.lr=0.03,0.1,0.3,1.0 \
        algorithm.y_lr=0.05,0.15 ;;
    f2sa)  # λ grows by 1 per iteration up to lam_max; the y step must keep y_lr·λ·L_g < 2
      tune algorithm=f2sa task=quadratic algorithm.lam_schedule=iteration algorithm.lam_step=1 \
        algorithm.lower.lr=0.15 algorithm.upper.lr=0.01,0.03,0.1,0.3 \
        algorithm.lam_max=30,100,300 algorithm.y_lr=0.0005,0.0015,0.005 ;;
    bo_rep|slip)
      tune algorithm=$a task=quadratic algorithm.upper.lr=0.01,0.03,0.1 \
        algorithm.upper_decay=0,0.3,0.5 algorithm.lower.lr=0.05,0.15 algorithm.estimator.lr=0.15 ;;
    ttsa)  # constant steps over the run (decay_clock=horizon, T0 = 1000 = the default run)
      tune algorithm=ttsa task=quadratic "${NEUMANN[@]}" \
        algorithm.upper.lr=0.003,0.01,0.03,0.1,0.3,1.0 algorithm.lower.lr=0.05,0.15 ;;
    unibio)
      tune algorithm=unibio task=quadratic algorithm.estimator.q=30 algorithm.estimator.lr=0.15 \
        algorithm.upper.lr=0.01,0.03,0.1 algorithm.upper_decay=0,0.3,0.5 \
        algorithm.lower.gamma1=0.05,0.15 ;;
    *) echo "unknown algorithm $a" >&2; exit 2 ;;
  esac
done
