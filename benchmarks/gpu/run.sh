#!/usr/bin/env bash
# The GPU checks of issue #22 in one device call (about 7 minutes), after
# `bash benchmarks/gpu/prepare.sh` here:
#
#   run(command="bash benchmarks/gpu/run.sh", carry=[".gpu"], timeout_s=600)
#
# 0. preflight: the card, the versions, and every import the steps need; if the bundle does
#    not import, stop at once (no GPU time spent on steps that cannot run);
# 1. speed.py on the first $DOCS CoNLL-2003 test documents with luke-large's config and random
#    weights: B1, B2 and luke_ner exact / exact+sdpa (the default) / bf16+sdpa, with FLOP
#    shares and peak memory, then exact+sdpa with each max_batch_items of $BUDGETS;
# 2. `spacy train configs/luke_ner.cfg --gpu-id 0` with mixed precision on a tiny model, its
#    losses logged as JSON lines (spacy.ConsoleLogger.v3);
# 3. training.py with a luke-base-shaped model for $TRAIN_SECONDS, fp32 and mixed precision.
# Each step's output and exit status land in $OUT; a failing step does not stop the others.
# Last, benchmarks/gpu/summary.py gathers them into $OUT/results.json and prints the table;
# the exit status is 0 only when every step passed and every figure is there.
# Locally, the CPU self-check builds a bare python3.12 venv and runs this script in it:
#   bash benchmarks/gpu/selfcheck.sh      (DEVICE=cpu SIZE=tiny DOCS=1 TRAIN_SECONDS=10)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu}
DEVICE=${DEVICE:-cuda}
DOCS=${DOCS:-20}
SIZE=${SIZE:-full}
TRAIN_SECONDS=${TRAIN_SECONDS:-60}
PEAK=${PEAK:-989}
BUDGETS=${BUDGETS:-"1024 16384"}
PYTHON=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.gpu}
DATA=$BUNDLE/data
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
rm -f "$OUT/steps.txt" "$OUT/spacy-train.jsonl"
tar xzf "$BUNDLE/site.tgz" -C "$WORK" || exit 1
export PYTHONPATH="$WORK/site" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GPU_ARGS=()
[[ $DEVICE == cuda* ]] && GPU_ARGS=(--gpu-id 0)

step() {  # step NAME SECONDS COMMAND...: run it, keep its log and exit status
  local name=$1 seconds=$2
  shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
  tail -n 25 "$OUT/$name.log"
}

summary() {
  "$PYTHON" benchmarks/gpu/summary.py "$OUT" --device "$DEVICE" --budgets $BUDGETS
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  >"$OUT/card.txt" 2>/dev/null || rm -f "$OUT/card.txt"
step preflight 120 "$PYTHON" -c "
import platform, torch, spacy, spacy.cli, weasel.cli, transformers, spacy_transformers
import luke_spacy.cli, transformers.models.luke, tqdm
from importlib.metadata import version
print('python', platform.python_version(), 'cuda', torch.cuda.is_available(), *(
    f'{name} {version(name)}' for name in ('torch', 'spacy', 'thinc', 'transformers',
    'spacy-transformers', 'tokenizers', 'huggingface-hub', 'typer', 'click', 'weasel')))
assert '$DEVICE' == 'cpu' or torch.cuda.is_available(), 'no CUDA device'
"
cat "$OUT/card.txt" "$OUT/preflight.log" >"$OUT/env.txt" 2>/dev/null
if ! grep -q "^preflight rc=0 " "$OUT/steps.txt"; then
  echo "preflight failed: not running the steps" >&2
  summary
  exit 1
fi

MODEL_ARGS=(--bpe-dir "$DATA")
[[ $SIZE == full ]] && MODEL_ARGS+=(--config "$DATA/luke-large-config.json")
step make-model 300 "$PYTHON" -m luke_spacy.cli random-model "${MODEL_ARGS[@]}" "$WORK/large"
# shellcheck disable=SC2086  # BUDGETS is a list
step speed 360 "$PYTHON" benchmarks/speed.py --model "$WORK/large" --conll "$DATA/eng.testb" \
  --max-docs "$DOCS" --device "$DEVICE" --modes exact exact+sdpa bf16+sdpa \
  --budgets $BUDGETS --budget-mode exact+sdpa --peak-tflops "$PEAK" --out "$OUT/speed.json"
rm -rf "$WORK/large"

"$PYTHON" -m luke_spacy.cli random-model --bpe-dir "$DATA" "$WORK/tiny" >/dev/null
"$PYTHON" -m luke_spacy.conll "$DATA" "$WORK/corpus" --max-docs 20 >/dev/null
# A tiny random model and a short run, with a learning rate that moves it within 40 steps.
# SIZE=tiny (the CPU self-check): sentence context, 100-word batches and 5 dev documents,
# so that it takes about a minute on 2 CPU cores.
STEPS=40
SPACY_ARGS=(--training.eval_frequency 10)
if [[ $SIZE != full ]]; then
  STEPS=20
  SPACY_ARGS=(--training.eval_frequency 5 --training.batcher.size 100 --corpora.dev.limit 5
    --components.luke_ner.context sentence)
fi
step spacy-train 240 "$PYTHON" -m spacy train configs/luke_ner.cfg --output "$WORK/trained" \
  --paths.train "$WORK/corpus/train.spacy" --paths.dev "$WORK/corpus/dev.spacy" \
  --paths.model "$WORK/tiny" --training.max_steps "$STEPS" "${SPACY_ARGS[@]}" \
  --training.optimizer.learn_rate.initial_rate 0.001 \
  --training.optimizer.learn_rate.warmup_steps 4 \
  --training.optimizer.learn_rate.total_steps "$STEPS" \
  --training.logger.@loggers spacy.ConsoleLogger.v3 --training.logger.progress_bar null \
  --training.logger.output_file "$OUT/spacy-train.jsonl" \
  --components.luke_ner.model.mixed_precision true "${GPU_ARGS[@]}"
TRAIN_SIZE=base
[[ $SIZE == full ]] || TRAIN_SIZE=small
for mixed in "" --mixed-precision; do
  step "train-$TRAIN_SIZE${mixed:+-mixed}" $((TRAIN_SECONDS + 240)) "$PYTHON" benchmarks/training.py \
    --conll "$DATA" --bpe-dir "$DATA" --size "$TRAIN_SIZE" --device "$DEVICE" $mixed \
    --budget-seconds "$TRAIN_SECONDS" --learn-rate 1e-4 --dev-docs 20 \
    --out "$OUT/train-$TRAIN_SIZE${mixed:+-mixed}.json"
done

cat "$OUT/steps.txt"
summary
