#!/usr/bin/env bash
# spaCy's own `spancat` (its default config) on GENIA: the baseline for nested LUKE (issue 20).
#
#   bash benchmarks/train_genia_spancat.sh          # ~10 min (3 min of CPU) on a shared core
#   OUT=/tmp/genia-spancat MAX_DOCS=25 HOLDOUT=5 MAX_STEPS=20 EVAL_FREQ=10 bash benchmarks/train_genia_spancat.sh
#
# GENIA here has no train split (shared/data/SOURCES.md), so the model trains on dev: the
# converter (luke_spacy.genia) writes dev-train.spacy (all but the last HOLDOUT dev documents)
# and dev-holdout.spacy (those documents) for spaCy's model selection and early stopping, and
# the test split is only used for the final scores. The config is `spacy init config
# --pipeline spancat --lang en` (CPU, efficiency: hash-embedding CNN tok2vec, ngram suggester of
# 1-3 tokens, threshold 0.5, patience 1600, max_steps 20000) with only the span key set to the
# gold's and the score weights renamed after it. Scored on test with `spacy evaluate`
# (spans_<key>_p/r/f, per type) and benchmarks/genia_score.py (inner-entity recall).
#
# Outputs under OUT: corpus/, spancat.cfg, model-best/, model-last/, train.log, train.jsonl,
# time.txt (wall and CPU seconds of spacy train), metrics/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared/data}"
GENIA="${GENIA:-$SHARED/genia}"
OUT="${OUT:-/work/models/genia-spancat}"
KEY="${KEY:-genia}"
HOLDOUT="${HOLDOUT:-20}"
MAX_DOCS="${MAX_DOCS:-0}"
# 0: the default config's max_steps (20000; patience 1600 usually ends it first).
MAX_STEPS="${MAX_STEPS:-0}"
# 0: the default config's eval_frequency (200).
EVAL_FREQ="${EVAL_FREQ:-0}"
THREADS="${THREADS:-1}"
# Longest suggested span in tokens: 0 keeps the default suggester (ngram sizes 1-3); N swaps in
# spacy.ngram_range_suggester.v1 (1-N) as the only change, to see what the default's reach costs.
MAX_NGRAM="${MAX_NGRAM:-0}"
RESULTS="${RESULTS:-$ROOT/benchmarks/results/genia-spancat.json}"

export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS"
export PYTHONUNBUFFERED=1
cd "$ROOT"
mkdir -p "$OUT/metrics"

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%H:%M:%S)" "$line"; done; }

python -m luke_spacy.genia "$GENIA" "$OUT/corpus" --spans-key "$KEY" --holdout-docs "$HOLDOUT" \
  --max-docs "$MAX_DOCS"

python -m spacy init config --pipeline spancat --lang en --force "$OUT/spancat.cfg"
python - "$OUT/spancat.cfg" "$KEY" "$MAX_NGRAM" <<'EOF'
import sys

from spacy.util import load_config

path, key, max_ngram = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load_config(path)
config["components"]["spancat"]["spans_key"] = key
if max_ngram:
    config["components"]["spancat"]["suggester"] = {
        "@misc": "spacy.ngram_range_suggester.v1", "min_size": 1, "max_size": max_ngram
    }
# spancat's factory declares its score weights for the key "sc": null drops them.
weights = {f"spans_sc_{m}": None for m in "fpr"} if key != "sc" else {}
weights.update({f"spans_{key}_{m}": float(m == "f") for m in "fpr"})
config["training"]["score_weights"] = weights
config.to_disk(path)
EOF

steps=()
if [ "$MAX_STEPS" != 0 ]; then steps+=(--training.max_steps "$MAX_STEPS"); fi
if [ "$EVAL_FREQ" != 0 ]; then steps+=(--training.eval_frequency "$EVAL_FREQ"); fi
rm -rf "$OUT/model-best" "$OUT/model-last" "$OUT/train.jsonl"
/usr/bin/time -f '{"wall_seconds": %e, "user_seconds": %U, "system_seconds": %S}' \
  -o "$OUT/time.txt" \
  python -m spacy train "$OUT/spancat.cfg" --output "$OUT" \
  --paths.train "$OUT/corpus/dev-train.spacy" --paths.dev "$OUT/corpus/dev-holdout.spacy" \
  --training.logger.@loggers spacy.ConsoleLogger.v2 \
  --training.logger.output_file "$OUT/train.jsonl" "${steps[@]}" 2>&1 | stamp | tee "$OUT/train.log"

python -m spacy evaluate "$OUT/model-best" "$OUT/corpus/test.spacy" \
  --output "$OUT/metrics/test.json"
python benchmarks/genia_score.py "$OUT/model-best" "$OUT/corpus/test.spacy" \
  --pred-key "$KEY" --gold-key "$KEY" --out "$OUT/metrics/test-genia-score.json"

python benchmarks/genia_spancat_report.py --out-dir "$OUT" --key "$KEY" --threads "$THREADS" \
  --results "$RESULTS"
