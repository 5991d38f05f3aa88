#!/usr/bin/env bash
# The GPU checks in one device call (about 7 minutes), after
# `bash benchmarks/gpu/prepare.sh` here:
#
#   run(command="bash benchmarks/gpu/run.sh", carry=[".gpu"], timeout_s=600)
#
# 1. speed.py on the first $DOCS CoNLL-2003 test documents with luke-large's config and random
#    weights: B1, B2 and luke_ner exact / exact+sdpa / bf16+sdpa, with FLOP shares;
# 2. `spacy train configs/luke_ner.cfg --gpu-id 0` with mixed precision on a tiny model;
# 3. training.py with a luke-base-shaped model for $TRAIN_SECONDS, fp32 and mixed precision.
# Each step's output and exit status land in $OUT; a failing step does not stop the others.
# Locally (CPU, a python3.12 that has torch) the same script checks itself:
#   DEVICE=cpu SIZE=tiny DOCS=1 TRAIN_SECONDS=10 PYTHON=... bash benchmarks/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu}
DEVICE=${DEVICE:-cuda}
DOCS=${DOCS:-20}
SIZE=${SIZE:-full}
TRAIN_SECONDS=${TRAIN_SECONDS:-60}
PEAK=${PEAK:-989}
PYTHON=${PYTHON:-python3}
DATA=.gpu/data
WORK=$(mktemp -d)
mkdir -p "$OUT"
tar xzf .gpu/site.tgz -C "$WORK" || exit 1
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

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PYTHON" -c "import torch, spacy, thinc, transformers, spacy_transformers, luke_spacy; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'spacy', spacy.__version__, \
'thinc', thinc.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"

MODEL_ARGS=(--bpe-dir "$DATA")
[[ $SIZE == full ]] && MODEL_ARGS+=(--config "$DATA/luke-large-config.json")
step make-model 300 "$PYTHON" -m luke_spacy.cli random-model "${MODEL_ARGS[@]}" "$WORK/large"
step speed 300 "$PYTHON" benchmarks/speed.py --model "$WORK/large" --conll "$DATA/eng.testb" \
  --max-docs "$DOCS" --device "$DEVICE" --modes exact exact+sdpa bf16+sdpa \
  --peak-tflops "$PEAK" --out "$OUT/speed.json"
rm -rf "$WORK/large"

"$PYTHON" -m luke_spacy.cli random-model --bpe-dir "$DATA" "$WORK/tiny" >/dev/null
"$PYTHON" -m luke_spacy.conll "$DATA" "$WORK/corpus" --max-docs 20 >/dev/null
step spacy-train 240 "$PYTHON" -m spacy train configs/luke_ner.cfg --output "$WORK/trained" \
  --paths.train "$WORK/corpus/train.spacy" --paths.dev "$WORK/corpus/dev.spacy" \
  --paths.model "$WORK/tiny" --training.max_steps 20 --training.eval_frequency 10 \
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
