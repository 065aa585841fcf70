#!/usr/bin/env bash
# The tuning runs behind configs/settings/quadratic*/ (issue #8): one bilevel-tune call per
# algorithm on the suite's strongly convex quadratic, replicated over the noise-free and the
# noisy problem (task.noise_std=0,0.5), seed 0, scored by the log10 true ‖∇Φ‖ averaged over the
# last 3 evaluations (bilevel/app/tune.py).
# Neumann estimators use Q = 30 terms of step 0.15 < 2/L (L = 10): truncation error
# (1 − 0.15)^30 < 1% along the smallest eigenvalue of ∇²ᵧᵧg.
# Usage: bash scripts/tune_synthetic.sh [ALGORITHM ...]   (default: all below; ~2 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
# The targets of issue #8 as requirements: from ‖∇Φ(x_0)‖ = 4.42 (seed 0), at most 0.0442 (100x)
# noise-free and 0.442 (10x) with noise; among the points meeting both, the best mean.
# SEEDS=0,1 (the later tunings) makes both seeds replicates that every requirement must hold
# on, so that a point is not chosen for one lucky seed (the check runs seed 0). NOISY_ONLY=1
# keeps only the noisy target where the noise-free one is out of reach (docs/settings-sources.md).
# A longer default run (trainer.max_steps=N below) is kept in the pair's settings file by hand:
# bilevel-tune --write writes the algorithm keys only and keeps the file's other keys.
REQ_CLEAN=(--require task.noise_std=0:0.0442)
REQ_NOISY=(--require task.noise_std=0.5:0.442)
NEUMANN=(algorithm.estimator.q=30 algorithm.estimator.lr=0.15)
tune() {
  local req=("${REQ_CLEAN[@]}" "${REQ_NOISY[@]}")
  [[ ${NOISY_ONLY:-0} == 1 ]] && req=("${REQ_NOISY[@]}")
  echo "== $*"
  bilevel-tune "$@" seed="${SEEDS:-0}" task.noise_std=0,0.5 --replicate task.noise_std --log \
    --aggregate mean "${req[@]}" --write --jobs "${JOBS:-1}" || echo "== FAILED: $*"
}
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
    adambo)  # Adam with a constant step oscillates (noise-free: 0.0045 to 0.5 by seed); a
      # decaying step lr0/(t+1)^a settles. lower.lr 0.15 from the first grid (0.05,0.15).
      SEEDS=0,1 tune algorithm=$a task=quadratic "${NEUMANN[@]}" algorithm.lower.lr=0.15 \
        algorithm.upper.lr=0.1,0.3,1.0 algorithm.upper_decay=0,0.5,0.7 ;;
    vr_adambo)  # STORM on a randomized-truncation estimate, two estimates a step (~33 oracle
      # calls): 3000 steps (trainer.max_steps in its settings file); the noise-free target is out
      # of reach (docs/settings-sources.md). lower.lr 0.05 and β 0.9 from a 1000-step grid.
      SEEDS=0,1 NOISY_ONLY=1 tune algorithm=$a task=quadratic trainer.max_steps=3000 \
        "${NEUMANN[@]}" algorithm.lower.lr=0.05 algorithm.beta=0.9 algorithm.upper.lr=0.1,0.3 \
        algorithm.upper_decay=0.5,0.7 ;;
    accbo)  # as vr_adambo, with a normalized step: 5000 steps (trainer.max_steps in its settings
      # file); only the noisy target is reachable. The 1000-step grid (upper.lr 0.01,0.03,0.1,
      # upper_decay 0,0.5, lower.lr 0.15, β 0.9,0.99) met neither target.
      SEEDS=0,1 NOISY_ONLY=1 tune algorithm=accbo task=quadratic trainer.max_steps=5000 \
        "${NEUMANN[@]}" algorithm.lower.lr=0.05 algorithm.beta=0.9 algorithm.upper_decay=0.7 \
        algorithm.upper.lr=0.3,1.0 ;;
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
