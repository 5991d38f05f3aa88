"""Training benchmark: a small LUKE-shaped model trained from scratch on CoNLL-2003.

    python benchmarks/training.py --conll DIR --budget-seconds 600 --out train.json

Trains `luke_ner` (random weights, the real RoBERTa vocabulary when --bpe-dir is given) with the
recipe's objective on CoNLL-2003 train for a fixed time budget (or --max-steps, whichever comes
first), then reports the entity F1 on the first dev documents and the time per epoch (measured
seconds per training word times the words of the training set). It measures the training
machinery, not LUKE's accuracy: LUKE's accuracy comes from its pretraining, which a
from-scratch model does not have. `--context sentence` trains on the sentences alone (passes
of ~100 instead of ~640 positions), so a CPU run sees enough steps for a non-trivial dev F1.
`--size base --device cuda [--mixed-precision]` is the luke-base-shaped GPU run (thinc's ops
on the GPU too, as `spacy train --gpu-id` sets them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import spacy
import torch
from spacy.training import Example
from thinc.api import Adam, warmup_linear
from tqdm import tqdm

from luke_spacy.conll import make_docs, read_conll, split_path, unannotated
from luke_spacy.random_model import build_random_checkpoint

SMALL = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "entity_emb_size": 128,
}
# luke-base's shape (RoBERTa-base plus 256-wide entity embeddings), for GPU runs.
BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "entity_emb_size": 256,
}
SIZES = {"small": SMALL, "base": BASE}


def examples(nlp, docs):
    """Examples whose predicted Docs have the gold words and sentence boundaries."""
    return [Example(unannotated(ref), ref) for ref in docs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conll", type=Path, required=True, help="folder with eng.train etc.")
    parser.add_argument("--bpe-dir", type=Path, help="RoBERTa vocab.json/merges.txt folder")
    parser.add_argument("--budget-seconds", type=float, default=600)
    parser.add_argument("--dev-docs", type=int, default=20)
    parser.add_argument("--batch-words", type=int, default=500)
    parser.add_argument("--learn-rate", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=0, help="0: the budget alone")
    parser.add_argument("--context", choices=("document", "sentence"), default="document")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda[:N] (as spacy train --gpu-id)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model shape")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="model.mixed_precision (GPU only)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    if cuda:
        # What `spacy train --gpu-id N` does: thinc's ops (and the optimizer) on the GPU too.
        spacy.require_gpu(int(args.device.partition(":")[2] or 0))

    vocab = spacy.blank("en").vocab
    train_docs = list(make_docs(vocab, read_conll(split_path(args.conll, "train"))))
    dev_docs = list(make_docs(vocab, read_conll(split_path(args.conll, "dev"))))[: args.dev_docs]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = [" ".join(t.text for t in doc) for doc in train_docs[:200]]
        model_dir = build_random_checkpoint(
            Path(tmp) / "model", config=SIZES[args.size], bpe_dir=args.bpe_dir, corpus=corpus,
            vocab_size=8000,
        )  # fmt: skip
        nlp = spacy.blank("en", vocab=vocab)
        cfg = {
            "model": {"name": str(model_dir), "mixed_precision": args.mixed_precision},
            "device": args.device,
            "context": args.context,
        }
        nlp.add_pipe("luke_ner", config=cfg)
        train = examples(nlp, train_docs)
        dev = examples(nlp, dev_docs)
        nlp.initialize(lambda: train)
    n_train_words = sum(len(eg.reference) for eg in train)
    # Linear decay to zero at --max-steps; without it the rate stays about constant.
    schedule = warmup_linear(args.learn_rate, args.warmup_steps, args.max_steps or 100_000)
    optimizer = Adam(schedule)
    start = time.perf_counter()
    steps = words = 0
    losses: list = []

    def done() -> bool:
        over_budget = time.perf_counter() - start >= args.budget_seconds
        return over_budget or 0 < args.max_steps <= steps

    # The bar counts steps against the time budget, whichever ends the run first.
    bar = tqdm(total=args.max_steps or None, unit="step", file=sys.stderr, dynamic_ncols=True)
    while not done():
        random.shuffle(train)
        batch, size = [], 0
        for eg in train:
            batch.append(eg)
            size += len(eg.reference)
            if size < args.batch_words:
                continue
            loss = nlp.update(batch, sgd=optimizer, drop=0.1)["luke_ner"]
            optimizer.step_schedules()
            steps += 1
            words += size
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            batch, size = [], 0
            if done():
                break
    train_seconds = time.perf_counter() - start
    bar.close()
    eval_start = time.perf_counter()
    scores = nlp.evaluate(dev)
    eval_seconds = time.perf_counter() - eval_start
    dev_words = sum(len(eg.reference) for eg in dev)
    report = {
        "model": SIZES[args.size],
        "size": args.size,
        "mixed_precision": args.mixed_precision,
        "card": torch.cuda.get_device_name() if cuda else None,
        "vocabulary": "RoBERTa BPE" if args.bpe_dir else "BPE trained on 200 train documents",
        "device": args.device,
        "threads": args.threads,
        "context": args.context,
        "learn_rate": args.learn_rate,
        "warmup_steps": args.warmup_steps,
        "max_steps": args.max_steps,
        "budget_seconds": args.budget_seconds,
        "train_seconds": train_seconds,
        "steps": steps,
        "seconds_per_step": train_seconds / max(steps, 1),
        "train_words_seen": words,
        "train_words_per_second": words / train_seconds if train_seconds else 0.0,
        "epochs_seen": words / n_train_words,
        "seconds_per_epoch": train_seconds * n_train_words / max(words, 1),
        "loss_first_10_steps": sum(losses[:10]) / max(1, len(losses[:10])),
        "loss_last_10_steps": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "dev_documents": len(dev),
        "dev_sentences": sum(len(list(eg.reference.sents)) for eg in dev),
        "dev_words": dev_words,
        "dev_entities": sum(len(eg.reference.ents) for eg in dev),
        "dev_ents_f": scores["ents_f"],
        "dev_ents_p": scores["ents_p"],
        "dev_ents_r": scores["ents_r"],
        "dev_eval_words_per_second": dev_words / eval_seconds,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
