#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for benchmarks/gpu/run.sh, here, where PyPI and ../shared are
# reachable. The device image has python3.12 with torch, numpy, safetensors, tqdm, typer,
# rich, requests, regex, pyyaml, jinja2 and more, but no spaCy, and transformers/tokenizers/
# huggingface-hub too new for spacy-transformers; .gpu/site.tgz holds exactly the missing
# packages (and luke_spacy itself, so its spaCy entry points resolve), stripped and pruned to
# fit the device's 64 MiB transfer limit. .gpu/data holds the CoNLL files, the RoBERTa BPE
# files and luke-large's config.json from ../shared, which does not travel.
#
#   bash benchmarks/gpu/prepare.sh            # then carry ".gpu" in the device call
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
PY=${PY:-3.12}
PLATFORMS=(manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64
  manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64)
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done
# Versions as in this project's own environment (spacy-transformers 1.3.x caps transformers).
PACKAGES=(spacy==3.8.18 thinc==8.3.14 blis catalogue cloudpathlib confection cymem murmurhash
  preshed smart-open srsly wasabi weasel spacy-legacy spacy-loggers spacy-transformers==1.3.9
  spacy-alignments transformers==4.49.0 tokenizers==0.21.4 "huggingface-hub<1.0" pydantic
  pydantic-core annotated-types typing-inspection)
# transformers model families the component needs; the others keep only their __init__.py
# (transformers.models imports every family package, each lazily).
KEEP_MODELS=(auto encoder_decoder luke mluke roberta xlm_roberta bert gpt2)

rm -rf .gpu && mkdir -p .gpu/wheels .gpu/data
pip download -q --no-deps --only-binary=:all: --python-version "$PY" "${PLATFORM_ARGS[@]}" \
  -d .gpu/wheels "${PACKAGES[@]}"
pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels .
pip install -q --no-deps --only-binary=:all: --python-version "$PY" "${PLATFORM_ARGS[@]}" \
  --target .gpu/site .gpu/wheels/*.whl
find .gpu/site -name "*.so" -exec strip --strip-unneeded {} +
find .gpu/site -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
for family in .gpu/site/transformers/models/*/; do
  name=$(basename "$family")
  if [[ ! " ${KEEP_MODELS[*]} " =~ " ${name} " ]]; then
    find "$family" -mindepth 1 ! -name __init__.py -exec rm -rf {} +
  fi
done
tar czf .gpu/site.tgz -C .gpu site
rm -rf .gpu/site .gpu/wheels

cp "$SHARED"/data/conll2003/eng.{train,testa,testb} .gpu/data/
cp "$SHARED"/data/roberta-bpe/{vocab.json,merges.txt} .gpu/data/
cp "$SHARED"/data/luke-large-finetuned-conll-2003/config.json .gpu/data/luke-large-config.json
du -sh .gpu
