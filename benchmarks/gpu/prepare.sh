#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for benchmarks/gpu/run.sh, here, where PyPI and ../shared are
# reachable. The device image has python3.12 with torch and some common packages
# (benchmarks/gpu/image.txt says which are assumed) but no spaCy, and transformers/tokenizers/
# huggingface-hub too new for spacy-transformers. .gpu/site.tgz holds every package that
# run.sh's steps need beyond those: luke-spacy's wheel (its spaCy entry points) and the
# dependency closure that pip resolves for it on the device's Python against the image's
# packages (benchmarks/gpu/bundle.py; the list lands in .gpu/bundle.txt), stripped and pruned
# to stay well under the device's 64 MiB transfer limit. .gpu/data holds the CoNLL files, the
# RoBERTa BPE files and luke-large's config.json from ../shared, which does not travel.
#
#   bash benchmarks/gpu/prepare.sh            # then carry ".gpu" in the device call
#   bash benchmarks/gpu/selfcheck.sh          # the CPU check of the bundle (see README)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
PY=${PY:-3.12}             # the device's Python version
GPU_DIR=${GPU_DIR:-.gpu}   # where the bundle goes
MAX_MIB=${MAX_MIB:-48}     # refuse a bundle larger than this (the device takes 64 MiB in all)
PYTHON=${PYTHON:-python}   # this machine's Python, with pip
# transformers model families the component needs; the others keep only their __init__.py
# (transformers.models imports every family package, each lazily).
KEEP_MODELS=(auto encoder_decoder luke mluke roberta xlm_roberta bert gpt2)

rm -rf "$GPU_DIR" && mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/data"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$GPU_DIR/wheels" .
"$PYTHON" benchmarks/gpu/bundle.py --image benchmarks/gpu/image.txt --python-version "$PY" \
  --out "$GPU_DIR/bundle.txt" --target "$GPU_DIR/site" "$GPU_DIR"/wheels/luke_spacy-*.whl
find "$GPU_DIR/site" -name "*.so" -exec strip --strip-unneeded {} +
find "$GPU_DIR/site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
rm -rf "$GPU_DIR/site/bin"
for family in "$GPU_DIR"/site/transformers/models/*/; do
  name=$(basename "$family")
  if [[ ! " ${KEEP_MODELS[*]} " =~ " ${name} " ]]; then
    find "$family" -mindepth 1 ! -name __init__.py -exec rm -rf {} +
  fi
done
tar czf "$GPU_DIR/site.tgz" -C "$GPU_DIR" site
rm -rf "$GPU_DIR/site" "$GPU_DIR/wheels"

cp "$SHARED"/data/conll2003/eng.{train,testa,testb} "$GPU_DIR/data/"
cp "$SHARED"/data/roberta-bpe/{vocab.json,merges.txt} "$GPU_DIR/data/"
cp "$SHARED"/data/luke-large-finetuned-conll-2003/config.json \
  "$GPU_DIR/data/luke-large-config.json"
size_kib=$(du -sk "$GPU_DIR" | cut -f1)
echo "$GPU_DIR: $((size_kib / 1024)) MiB ($(wc -l <"$GPU_DIR/bundle.txt") packages)"
if ((size_kib > MAX_MIB * 1024)); then
  echo "error: $GPU_DIR is over $MAX_MIB MiB; prune it (KEEP_MODELS) before carrying it" >&2
  exit 1
fi
