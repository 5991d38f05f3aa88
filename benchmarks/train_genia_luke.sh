#!/usr/bin/env bash
# A small LUKE-shaped model trained from nested gold on GENIA (issue 20), beside spaCy's spancat
# (train_genia_spancat.sh): the same data, the same split, scored the same way.
#
#   bash benchmarks/train_genia_luke.sh                       # STEPS=400: ~10-15 min on one core
#   STEPS=1600 RESULTS=benchmarks/results/genia-luke-1600.json OUT=/work/models/genia-luke-1600 \
#       bash benchmarks/train_genia_luke.sh                   # the longer run
#   OUT=/tmp/genia-luke MAX_DOCS=4 HOLDOUT=1 STEPS=4 EVAL_FREQ=2 bash benchmarks/train_genia_luke.sh
#
# GENIA here has no train split (shared/data/SOURCES.md), so the model trains on dev: the
# converter (luke_spacy.genia) writes dev-train.spacy (all but the last HOLDOUT dev documents)
# and dev-holdout.spacy (those), which picks model-best by the nested group's F1; test is only
# used for the final scores. Steps: (1) the converter, (2) `luke-spacy random-model` with
# benchmarks/conll-small-config.json (2 layers of 128, random init, the real RoBERTa BPE; the
# head is made anew for GENIA's 5 types at initialize), (3) `spacy train
# configs/luke_ner_genia.cfg` (gold_spans_key = nested_spans_key = "genia": each candidate span
# learns its own label from the nested gold; sentence context) with the CoNLL small model's
# optimizer settings, (4) `spacy evaluate --spans-key genia` on test (spans_genia_* and ents_*),
# and benchmarks/genia_score.py for the nested group and for doc.ents against the nested gold,
# inner-entity recall included, (5) with TUNE=1 (the default), `luke-spacy tune-thresholds
# --target nested --temperature --no-nil-veto` of model-best on dev-holdout (the thresholds of
# the opt-in nil_veto = false rule, for the nested group) and the tuned pipeline scored on test
# the same way, (6) the summary JSON with spancat's figures beside (genia_luke_report.py).
#
# Outputs under OUT: corpus/, init/, model-best/, model-last/, tuned/, train.log, train.jsonl,
# time.txt (wall and CPU seconds of spacy train), metrics/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared/data}"
GENIA="${GENIA:-$SHARED/genia}"
BPE="${BPE:-$SHARED/roberta-bpe}"
OUT="${OUT:-/work/models/genia-luke}"
MODEL_CONFIG="${MODEL_CONFIG:-$ROOT/benchmarks/conll-small-config.json}"
KEY=genia  # configs/luke_ner_genia.cfg's span key
HOLDOUT="${HOLDOUT:-20}"
MAX_DOCS="${MAX_DOCS:-0}"
THREADS="${THREADS:-1}"
STEPS="${STEPS:-400}"
EVAL_FREQ="${EVAL_FREQ:-100}"
LR="${LR:-0.001}"
WARMUP="${WARMUP:-$((STEPS / 13))}"
DROPOUT="${DROPOUT:-0.1}"
BATCH_WORDS="${BATCH_WORDS:-500}"
SEED="${SEED:-0}"
TUNE="${TUNE:-1}"
RESULTS="${RESULTS:-$ROOT/benchmarks/results/genia-luke.json}"
SPANCAT="${SPANCAT:-$ROOT/benchmarks/results/genia-spancat.json}"

export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" PYTHONUNBUFFERED=1
cd "$ROOT"
mkdir -p "$OUT/metrics"

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%H:%M:%S)" "$line"; done; }

python -m luke_spacy.genia "$GENIA" "$OUT/corpus" --spans-key "$KEY" --holdout-docs "$HOLDOUT" \
  --max-docs "$MAX_DOCS"
rm -rf "$OUT/init"
luke-spacy random-model "$OUT/init" --config "$MODEL_CONFIG" --bpe-dir "$BPE" --seed "$SEED"

rm -rf "$OUT/model-best" "$OUT/model-last" "$OUT/train.jsonl"
/usr/bin/time -f '{"wall_seconds": %e, "user_seconds": %U, "system_seconds": %S}' \
  -o "$OUT/time.txt" \
  python -m spacy train configs/luke_ner_genia.cfg --output "$OUT" \
  --paths.train "$OUT/corpus/dev-train.spacy" --paths.dev "$OUT/corpus/dev-holdout.spacy" \
  --paths.model "$OUT/init" --system.seed "$SEED" \
  --training.dropout "$DROPOUT" --training.batcher.size "$BATCH_WORDS" \
  --training.max_steps "$STEPS" --training.eval_frequency "$EVAL_FREQ" \
  --training.optimizer.learn_rate.total_steps "$STEPS" \
  --training.optimizer.learn_rate.warmup_steps "$WARMUP" \
  --training.optimizer.learn_rate.initial_rate "$LR" \
  --training.logger.@loggers spacy.ConsoleLogger.v2 \
  --training.logger.output_file "$OUT/train.jsonl" 2>&1 | stamp | tee "$OUT/train.log"

python -m spacy evaluate "$OUT/model-best" "$OUT/corpus/test.spacy" --spans-key "$KEY" \
  --output "$OUT/metrics/test.json" --code scripts/gold_sentences.py
python benchmarks/genia_score.py "$OUT/model-best" "$OUT/corpus/test.spacy" \
  --pred-key "$KEY" --gold-key "$KEY" --out "$OUT/metrics/test-nested.json"
python benchmarks/genia_score.py "$OUT/model-best" "$OUT/corpus/test.spacy" \
  --pred-key ents --gold-key "$KEY" --out "$OUT/metrics/test-flat.json"

if [ "$TUNE" = 1 ]; then
  luke-spacy tune-thresholds "$OUT/model-best" "$OUT/corpus/dev-holdout.spacy" "$OUT/tuned" \
    --force --target nested --temperature --no-nil-veto --scores "$OUT/metrics/tune.json"
  for pred in "$KEY" ents; do
    name=$([ "$pred" = ents ] && echo flat || echo nested)
    python benchmarks/genia_score.py "$OUT/tuned" "$OUT/corpus/test.spacy" \
      --pred-key "$pred" --gold-key "$KEY" --out "$OUT/metrics/test-$name-tuned.json"
  done
fi

python benchmarks/genia_luke_report.py --out-dir "$OUT" --key "$KEY" --threads "$THREADS" \
  --results "$RESULTS" --spancat "$SPANCAT" --steps "$STEPS" --eval-frequency "$EVAL_FREQ" \
  --learn-rate "$LR" --warmup-steps "$WARMUP" --dropout "$DROPOUT" \
  --batch-words "$BATCH_WORDS" --seed "$SEED" --model-config "$MODEL_CONFIG"
