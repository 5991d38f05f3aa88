"""Write the meta that `spacy package --meta-path` takes for a luke_ner pipeline.

It records the checkpoint the pipeline wraps (description, url, sources) and says that the
pipeline's license is the checkpoint's, and it requires luke-spacy with the extras the
checkpoint's tokenizer needs (`luke-spacy[mluke]` for mLUKE, whose tokenizer needs
sentencepiece), in place of the plain `luke-spacy` requirement `spacy package` would add.
The pipeline's own meta requirements are kept.

Usage: python scripts/package_meta.py PIPELINE_DIR OUTPUT.json [--author NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import spacy
import srsly

from luke_spacy.packaging import checkpoint_meta, pipeline_checkpoints


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", type=Path, help="the pipeline folder to package")
    parser.add_argument("output", type=Path, help="where to write the meta (JSON)")
    parser.add_argument("--author", default="", help="default: the checkpoints' hub owners")
    args = parser.parse_args(argv)
    nlp = spacy.load(args.pipeline)
    found = pipeline_checkpoints(nlp)
    if not found:
        print(f"error: {args.pipeline} has no luke_ner component", file=sys.stderr)
        return 1
    meta = checkpoint_meta(
        [checkpoint for _, checkpoint, _ in found],
        [tokenizer for _, _, tokenizer in found],
        requirements=nlp.meta.get("requirements", []),
        author=args.author,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    srsly.write_json(args.output, meta)
    print(f"{args.output}: requirements {meta['requirements']}; license: {meta['license']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
