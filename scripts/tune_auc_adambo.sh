#!/usr/bin/env bash
# The tuning run behind configs/settings/data/auc/sentiment140-transformer/adambo.yaml (issue #8;
# the README's deep-AUC quickstart): the specs give no AdamBO step sizes for deep AUC. Small
# scale, 3 epochs, seeds 0 and 1, selected by the mean validation ROC-AUC at the last evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
bilevel-tune task=auc model=transformer algorithm=adambo trainer.epochs=3 \
  algorithm.upper.lr=1e-4,1e-3,1e-2 algorithm.lower.lr=0.1,1.0 seed=0,1 \
  --metric val_auc --mode max --last 1 --data --write --jobs "${JOBS:-1}"
