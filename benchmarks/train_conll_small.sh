#!/usr/bin/env bash
# A small LUKE-shaped model trained from scratch on CoNLL-2003 with `spacy train`: the trained
# model that the ONNX int8 accuracy check and the per-label threshold tuning run on (random
# weights cannot judge either). Re-makes everything from the CoNLL files and the RoBERTa BPE:
#
#   bash benchmarks/train_conll_small.sh                       # ~2 h on one shared CPU core
#   OUT=/tmp/conll-small MAX_DOCS=5 STEPS=10 EVAL_FREQ=5 bash benchmarks/train_conll_small.sh  # smoke run
#
# Steps: (1) the project's `convert` (luke_spacy.conll: one Doc per document, gold sentences),
# (2) `luke-spacy random-model` with benchmarks/conll-small-config.json (luke-large's config,
# 2 layers of 128: random init, real RoBERTa BPE), (3) `spacy train configs/luke_ner.cfg` with
# command-line overrides only (sentence context; the recipe's spans of <= 16 subwords, 128 spans
# per pass, batches of ~500 words, Adam with weight decay 0.01 and gradient clipping 5, linear
# warm-up and decay), (4) `spacy evaluate` of model-best on dev and test (gold sentence
# boundaries, as the project's `evaluate`), and on test with document context too
# (evaluate_with.py), (5) the summary JSON (conll_small_report.py).
#
# Outputs under OUT: corpus/, init/ (the random checkpoint), model-best/, model-last/,
# train.log (spaCy's table with wall-clock times), train.jsonl (spaCy's log), metrics/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared/data}"
CONLL="${CONLL:-$SHARED/conll2003}"
BPE="${BPE:-$SHARED/roberta-bpe}"
OUT="${OUT:-/work/models/conll-small}"
MODEL_CONFIG="${MODEL_CONFIG:-$ROOT/benchmarks/conll-small-config.json}"
THREADS="${THREADS:-1}"
CONTEXT="${CONTEXT:-sentence}"
STEPS="${STEPS:-4000}"
EVAL_FREQ="${EVAL_FREQ:-500}"
LR="${LR:-0.001}"
WARMUP="${WARMUP:-300}"
DROPOUT="${DROPOUT:-0.1}"
BATCH_WORDS="${BATCH_WORDS:-500}"
SEED="${SEED:-0}"
# Documents per split (0 = all; a small number = smoke run, counts not checked).
MAX_DOCS="${MAX_DOCS:-0}"
RESULTS="${RESULTS:-$ROOT/benchmarks/results/conll-small-train.json}"

export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" PYTHONUNBUFFERED=1
cd "$ROOT"
mkdir -p "$OUT/metrics"

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%H:%M:%S)" "$line"; done; }

python -m luke_spacy.conll "$CONLL" "$OUT/corpus" --max-docs "$MAX_DOCS"
rm -rf "$OUT/init"
luke-spacy random-model "$OUT/init" --config "$MODEL_CONFIG" --bpe-dir "$BPE" --seed "$SEED"

rm -rf "$OUT/model-best" "$OUT/model-last" "$OUT/train.jsonl"
start=$(date +%s)
python -m spacy train configs/luke_ner.cfg --output "$OUT" \
  --paths.train "$OUT/corpus/train.spacy" --paths.dev "$OUT/corpus/dev.spacy" \
  --paths.model "$OUT/init" --system.seed "$SEED" \
  --components.luke_ner.context "$CONTEXT" \
  --training.dropout "$DROPOUT" --training.batcher.size "$BATCH_WORDS" \
  --training.max_steps "$STEPS" --training.eval_frequency "$EVAL_FREQ" \
  --training.optimizer.learn_rate.total_steps "$STEPS" \
  --training.optimizer.learn_rate.warmup_steps "$WARMUP" \
  --training.optimizer.learn_rate.initial_rate "$LR" \
  --training.logger.@loggers spacy.ConsoleLogger.v2 --training.logger.output_file "$OUT/train.jsonl" 2>&1 | stamp | tee "$OUT/train.log"
end=$(date +%s)

for split in dev test; do
  python -m spacy evaluate "$OUT/model-best" "$OUT/corpus/$split.spacy" \
    --output "$OUT/metrics/$split.json" --code scripts/gold_sentences.py
done
# The same model with the recipe's document context at inference (trained with $CONTEXT).
if [ "$CONTEXT" != document ]; then
  python benchmarks/evaluate_with.py "$OUT/model-best" "$OUT/corpus/test.spacy" \
    --set context=document --out "$OUT/metrics/test-document-context.json"
fi

python benchmarks/conll_small_report.py --out-dir "$OUT" --results "$RESULTS" \
  --train-seconds $((end - start)) --threads "$THREADS" --context "$CONTEXT" \
  --steps "$STEPS" --eval-frequency "$EVAL_FREQ" --learn-rate "$LR" --warmup-steps "$WARMUP" \
  --dropout "$DROPOUT" --batch-words "$BATCH_WORDS" --seed "$SEED" \
  --model-config "$MODEL_CONFIG"
