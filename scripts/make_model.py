"""Build a stand-in LUKE checkpoint with random weights, for runs without the real weights.

A stand-in loads and runs exactly like `studio-ousia/luke-large-finetuned-conll-2003` (same
classes, labels NIL/MISC/PER/ORG/LOC, `[MASK]` entity id 2), so every project command works
with it; its predictions are random, so its scores mean nothing. Speed does not depend on
weight values: a full-size stand-in with the RoBERTa vocabulary times like the real model.

  tiny: 2 layers of width 32 and a byte-level BPE trained on a few sentences (seconds).
  full: the luke-large shape (24 layers, 1024 wide, about 560M parameters, 2.2 GB), or the
        shape of `--config` (a checkpoint's config.json); use `--bpe-dir` with RoBERTa's
        vocab.json and merges.txt for the real subword vocabulary.

Usage: python scripts/make_model.py OUT [--size tiny|full] [--config CONFIG] [--bpe-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The shape of studio-ousia/luke-large-finetuned-conll-2003 (its config.json).
LUKE_LARGE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "entity_emb_size": 256,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-05,
    "use_entity_aware_attention": True,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="output folder")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--config", default="", help="config.json giving the shape (full)")
    parser.add_argument("--bpe-dir", default="", help="folder with vocab.json and merges.txt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--classifier-std",
        type=float,
        default=1.0,
        help="std of the classifier weights: wide logit margins make exact comparisons robust",
    )
    args = parser.parse_args(argv)

    from luke_spacy.random_model import build_random_checkpoint

    config = None
    if args.config:
        if args.size != "full":
            parser.error("--config sets the shape of a full-size model: add --size full")
        config = json.loads(Path(args.config).read_text(encoding="utf8"))
    elif args.size == "full":
        config = dict(LUKE_LARGE)
    t0 = time.perf_counter()
    path = build_random_checkpoint(
        args.output,
        config=config,
        bpe_dir=args.bpe_dir or None,
        seed=args.seed,
        classifier_std=args.classifier_std,
    )
    print(f"Stand-in {args.size} checkpoint written to {path} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
