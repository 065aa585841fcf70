#!/usr/bin/env bash
# Upper steps for the SNLI hyper-representation pairs (task=hyperrep, the NLI RNN; issue #8)
# without published steps and in no figure: AccBO, SUSTAIN, UniBiO, VR-AdamBO, VRBO. (AdamBO has
# none either, but figure adambo/snli runs it on R-ADAM's TREC values, its algorithm defaults, by
# the entry's choice; it keeps them.) The rule of scripts/tune_hyperrep_amazon.sh: the upper step
# only, 50 steps, seeds 0 and 1, scored by the meta-training accuracy after adaptation, written
# (kind T, every scale) only where the best point leaves chance (mean train_acc > 0.55), a best
# point at a grid edge extended past it, at most twice. Grids: SGD {0.3, 1, 3}; normalized
# (AccBO, UniBiO) {0.03, 0.3, 3}; Adam (VR-AdamBO) {1e-3, 5e-3, 2e-2}.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
common=(task=hyperrep trainer.max_steps=50 trainer.progress=false seed=0,1
        --metric train_acc --mode max --last 1 --jobs "${JOBS:-2}")
# Edge extensions made (a rerun reuses every trial already made): UniBiO 3e-3 then 3e-4,
# VR-AdamBO 2e-4 (interior at 1e-3), SUSTAIN 10 then 30, VRBO 10 then 30.
for spec in "accbo 0.03,0.3,3" "unibio 0.0003,0.003,0.03,0.3,3" "vr_adambo 2e-4,1e-3,5e-3,2e-2" \
            "sustain 0.3,1,3,10,30" "vrbo 0.3,1,3,10,30"; do
  set -- $spec
  bilevel-tune algorithm="$1" algorithm.upper.lr="$2" "${common[@]}" --write --write-if-beats 0.55
done
