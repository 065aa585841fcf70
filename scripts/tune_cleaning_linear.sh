#!/usr/bin/env bash
# The tuning run behind configs/settings/hypercleaning_linear/soba.yaml (issue #8; the README's
# hyper-cleaning quickstart): SOBA on SNLI hyper-cleaning with a linear lower level at small
# scale, 50 epochs (400 steps), seeds 0 and 1, selected by the mean final cleaning ROC-AUC of
# σ(x) (corrupted against clean training samples). The lower step 0.5 with a 100-step SGD warm
# start fits the linear head (its Hessian's top eigenvalue is below 1 on GloVe-LSTM features).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
bilevel-tune task=hypercleaning_linear algorithm=soba trainer.epochs=50 \
  algorithm.lower.lr=0.5 \
  'algorithm.lower.warm_start_with={_target_:bilevel.lower.SGD,lr:0.5,steps:100}' \
  algorithm.upper.lr=100,300,1000 algorithm.estimator.lr=0.5,1.0 seed=0,1 \
  --metric cleaning_auc --mode max --last 1 --write --jobs "${JOBS:-1}"
