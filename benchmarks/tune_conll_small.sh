#!/usr/bin/env bash
# Per-label thresholds (issue 20) on the small CoNLL-2003 model (train_conll_small.sh):
# `luke-spacy tune-thresholds` on dev, then `spacy evaluate` of each tuned pipeline on test,
# which the tuning never saw.
#
#   bash benchmarks/tune_conll_small.sh        # ~5 min on one shared core
#
# Three pipelines: the model as trained (the recipe's decoding), tuned thresholds with a fitted
# temperature (--temperature: the thresholds only remove entities), and the same with the opt-in
# nil_veto = false (--no-nil-veto: a span under no-entity competes when its entity label passes
# its threshold, so recall can rise); for each, the expected calibration error of its entity
# scores on test (calibration.py). Outputs under OUT: tuned/, tuned-no-nil-veto/, metrics/;
# the summary is benchmarks/results/conll-small-thresholds.json (thresholds_report.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${MODEL:-/work/models/conll-small/model-best}"
CORPUS="${CORPUS:-/work/models/conll-small/corpus}"
OUT="${OUT:-/work/models/conll-small-thresholds}"
THREADS="${THREADS:-1}"
RESULTS="${RESULTS:-$ROOT/benchmarks/results/conll-small-thresholds.json}"

export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" PYTHONUNBUFFERED=1
cd "$ROOT"
mkdir -p "$OUT/metrics"

luke-spacy tune-thresholds "$MODEL" "$CORPUS/dev.spacy" "$OUT/tuned" --force --temperature \
  --scores "$OUT/metrics/tune-tuned.json"
luke-spacy tune-thresholds "$MODEL" "$CORPUS/dev.spacy" "$OUT/tuned-no-nil-veto" --force \
  --temperature --no-nil-veto --scores "$OUT/metrics/tune-tuned-no-nil-veto.json"
for name in tuned tuned-no-nil-veto; do
  python -m spacy evaluate "$OUT/$name" "$CORPUS/test.spacy" --output "$OUT/metrics/test-$name.json" \
    --code scripts/gold_sentences.py
done
# The calibration error on test, which the temperature was not fitted on.
python benchmarks/calibration.py "$CORPUS/test.spacy" "$MODEL" "$OUT/tuned" "$OUT/tuned-no-nil-veto" \
  --out "$OUT/metrics/test-calibration.json"

python benchmarks/thresholds_report.py --out-dir "$OUT" --model "$MODEL" \
  --baseline-test "$(dirname "$MODEL")/metrics/test.json" --results "$RESULTS"
