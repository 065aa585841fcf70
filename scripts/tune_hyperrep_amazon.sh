#!/usr/bin/env bash
# Upper steps for the Amazon hyper-representation pairs without published ones (task=
# hyperrep_amazon; x = the RNN encoder, y = the linear head; issue #8). BO-REP Fig. 1 gives steps
# for StocBiO, TTSA, SOBA/SABA, MA-SOBA, BO-REP, MAML and ANIL only; the eight other methods ran
# on their algorithm defaults. Each gets a grid over its upper step only, 50 steps (2.5 epochs;
# MA-SOBA at the papers' steps needs about that many to leave chance), seeds 0 and 1, scored by
# the meta-training accuracy after adaptation (train_acc, last evaluation; no test data), the
# rule of scripts/tune_hyperrep_trec.sh: a value is written only where the best point leaves
# chance (mean train_acc > 0.55); it applies at every scale (no paper value, kind T). Grids:
# SGD {0.3, 1, 3}; normalized (AccBO, SLIP, UniBiO) {0.03, 0.3, 3}; Adam (AdamBO, VR-AdamBO)
# {1e-3, 5e-3, 2e-2} (AdamBO's TREC step: 5e-3).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
common=(task=hyperrep_amazon trainer.max_steps=50 trainer.progress=false seed=0,1
        --metric train_acc --mode max --last 1 --jobs "${JOBS:-2}")
# Where the best point was a grid edge, the grid was extended past it and the script rerun (a
# rerun reuses every trial already made), until the best is interior or after two extensions:
# SLIP 30 (interior at 3), UniBiO 0.01, 0.003, then 0.001, AdamBO 8e-2 then 0.3, VRBO 10 then 30.
for spec in "slip 0.03,0.3,3,30" "accbo 0.03,0.3,3" "unibio 0.001,0.003,0.01,0.03,0.3,3" \
            "adambo 1e-3,5e-3,2e-2,8e-2,0.3" "vr_adambo 1e-3,5e-3,2e-2" "f2sa 0.3,1,3" \
            "sustain 0.3,1,3" "vrbo 0.3,1,3,10,30"; do
  set -- $spec
  bilevel-tune algorithm="$1" algorithm.upper.lr="$2" "${common[@]}" --write --write-if-beats 0.55
done
