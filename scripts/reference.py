"""Compare luke_ner with transformers' own LUKE path, sentence by sentence.

The transformers path is the one of LUKE's notebook (`notebooks/huggingface_conll_2003.ipynb`):
the checkpoint's `LukeTokenizer` called with `entity_spans`, `LukeForEntitySpanClassification`,
and the notebook's greedy decoding loop. It runs on the same documents as the pipeline.

The two procedures coincide, so their entities must be identical, under these settings:

* sentence context: transformers gets the sentence text alone (the words joined by single
  spaces); luke_ner runs with `context = "sentence"` and gold sentence boundaries;
* candidate spans: every word span of at most `max_mention_length` subwords, with
  `max_mention_length` the tokenizer's own (30 for the released checkpoint), so the entity
  position ids have the same padding on both sides;
* one forward pass per sentence holding all of its spans: transformers without truncation;
  luke_ner with `max_entity_length` larger than any sentence's span count and
  `max_batch_items = 1`, so every pass runs alone, unpadded, as transformers runs it.

With these settings both sides build the same tensors: every word is its own tokenizer piece
(" " + word), since every word boundary is a span boundary. The report also gives the largest
absolute difference between the two sides' logits.

Usage: python scripts/reference.py PIPELINE MODEL DATA --output metrics/reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import spacy
import torch
from spacy.tokens import DocBin
from tqdm import tqdm
from transformers import AutoTokenizer, LukeForEntitySpanClassification

from luke_spacy.conll import join_words, unannotated

Entity = Tuple[int, int, str]  # word start, word end (exclusive), label; sentence offsets
BIG = 1_000_000


def notebook_decode(
    word_spans: Sequence[Tuple[int, int]],
    logits: Sequence[Sequence[float]],
    n_words: int,
    id2label: Optional[Dict[int, str]] = None,
    preset: Sequence[int] = (),
) -> List[Entity]:
    """The decode loop of LUKE's CoNLL notebook (studio-ousia/luke,
    notebooks/huggingface_conll_2003.ipynb): argmax, drop NIL, stable sort by max logit,
    greedy. The project's one deliberately independent reference for the component's
    decoding (the tests use it too). Words in `preset` are already taken; labels are ids, or
    names through `id2label`. RETURNS sorted (start, end, label)."""
    candidates = []
    for k, (ws, we) in enumerate(word_spans):
        row = [float(x) for x in logits[k]]
        best = max(row)
        idx = row.index(best)
        if idx != 0:
            candidates.append((best, (ws, we), idx if id2label is None else id2label[idx]))
    free = [w not in set(preset) for w in range(n_words)]
    entities = []
    for _, (ws, we), label in sorted(candidates, key=lambda c: c[0], reverse=True):
        if all(free[ws:we]):
            free[ws:we] = [False] * (we - ws)
            entities.append((ws, we, label))
    return sorted(entities)


class TransformersReference:
    """transformers' LUKE path on one sentence at a time."""

    def __init__(self, model: str, device: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = LukeForEntitySpanClassification.from_pretrained(model).eval().to(device)
        self.device = device
        self.max_mention_length = self.tokenizer.max_mention_length
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}

    def spans(
        self, words: Sequence[str]
    ) -> Tuple[str, List[Tuple[int, int]], List[Tuple[int, int]]]:
        """Sentence text, character spans and word spans, as the notebook builds them."""
        text, chars = join_words(words)
        lengths = [len(self.tokenizer.tokenize(word)) for word in words]
        char_spans, word_spans = [], []
        for i in range(len(words)):
            for j in range(i, len(words)):
                if sum(lengths[i : j + 1]) <= self.max_mention_length:
                    char_spans.append((chars[i][0], chars[j][1]))
                    word_spans.append((i, j + 1))
        return text, char_spans, word_spans

    @torch.no_grad()
    def __call__(
        self, words: Sequence[str]
    ) -> Tuple[List[Entity], Dict[Tuple[int, int], numpy.ndarray]]:
        text, char_spans, word_spans = self.spans(words)
        if not char_spans:
            return [], {}
        inputs = self.tokenizer(text, entity_spans=char_spans, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        logits = self.model(**inputs).logits[0].float().cpu().numpy()
        entities = notebook_decode(word_spans, logits, len(words), self.id2label)
        return entities, dict(zip(word_spans, logits))


def load_pipeline(path: str, max_mention_length: int):
    """The pipeline, its luke_ner switched to the settings where both procedures coincide."""
    settings = {
        "context": "sentence",
        "max_mention_length": max_mention_length,
        "max_entity_length": BIG,
        "max_batch_items": 1,
        "dtype": "float32",
        "overwrite_ents": True,
    }
    nlp = spacy.load(path, config={"components": {"luke_ner": settings}})
    return nlp, nlp.get_pipe("luke_ner")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="assembled pipeline folder (or package name)")
    parser.add_argument("model", help="the checkpoint for transformers: hub id or folder")
    parser.add_argument("data", type=Path, help="a .spacy DocBin with sentence boundaries")
    parser.add_argument("--output", type=Path, required=True, help="report JSON")
    parser.add_argument("--gpu-id", type=int, default=-1, help="GPU id, -1 for CPU")
    parser.add_argument("--max-docs", type=int, default=0, help="first N documents (0 = all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)

    device = "cpu"
    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
        device = f"cuda:{args.gpu_id}"
    started = time.perf_counter()
    reference = TransformersReference(args.model, device)
    nlp, pipe = load_pipeline(args.pipeline, reference.max_mention_length)
    gold = list(DocBin().from_disk(args.data).get_docs(nlp.vocab))
    if args.max_docs:
        gold = gold[: args.max_docs]
    docs = [unannotated(g) for g in gold]

    n_sentences = n_equal = n_ours = n_theirs = n_spans = 0
    max_diff = 0.0
    differing = []
    spaCy_seconds = hf_seconds = 0.0
    progress = tqdm(
        total=sum(len(doc) for doc in docs), unit="word", file=sys.stderr, disable=args.no_progress
    )
    for d, doc in enumerate(docs):
        t0 = time.perf_counter()
        pipe.set_annotations([doc], pipe.predict([doc]))
        spaCy_seconds += time.perf_counter() - t0
        # The logits come from a second, separate scoring run, outside the timing.
        scores = pipe.span_scores([doc])[0]
        ours_logits = {tuple(span): row for span, row in zip(scores.spans.tolist(), scores.logits)}
        for s, sent in enumerate(doc.sents):
            words = [t.text for t in sent]
            t0 = time.perf_counter()
            theirs, their_logits = reference(words)
            hf_seconds += time.perf_counter() - t0
            progress.update(len(words))
            ours = sorted(
                (e.start - sent.start, e.end - sent.start, e.label_)
                for e in doc.ents
                if sent.start <= e.start < sent.end
            )
            n_sentences += 1
            n_ours += len(ours)
            n_theirs += len(theirs)
            n_spans += len(their_logits)
            mine = {
                (a - sent.start, b - sent.start): row
                for (a, b), row in ours_logits.items()
                if sent.start <= a < sent.end
            }
            same_spans = mine.keys() == their_logits.keys()
            if same_spans and mine:
                diff = max(float(numpy.abs(mine[k] - their_logits[k]).max()) for k in mine)
                max_diff = max(max_diff, diff)
            if ours == theirs and same_spans:
                n_equal += 1
            else:
                differing.append(
                    {
                        "id": f"doc{d}.sent{s}",
                        "words": words,
                        "luke_ner": ours,
                        "transformers": theirs,
                        "same_candidate_spans": same_spans,
                    }
                )
    progress.close()
    report = {
        "pipeline": args.pipeline,
        "model": args.model,
        "data": str(args.data),
        "device": device,
        "settings": {
            "luke_ner": {
                k: pipe.cfg.get(k)
                for k in (
                    "context",
                    "max_mention_length",
                    "max_entity_length",
                    "max_batch_items",
                    "dtype",
                    "attention",
                )
            },
            "transformers": "LukeTokenizer(sentence text, entity_spans=all spans of <= "
            f"{reference.max_mention_length} subwords), one sentence per forward pass, "
            "notebook decoding",
        },
        "documents": len(docs),
        "sentences": n_sentences,
        "equal": n_equal,
        "differing": len(differing),
        "differing_ids": [item["id"] for item in differing],
        "differences": differing[:20],
        "candidate_spans": n_spans,
        "entities_luke_ner": n_ours,
        "entities_transformers": n_theirs,
        "max_abs_logit_diff": max_diff,
        "seconds_luke_ner": round(spaCy_seconds, 3),
        "seconds_transformers": round(hf_seconds, 3),
        "seconds_total": round(time.perf_counter() - started, 3),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(
        f"{n_equal} of {n_sentences} sentences equal ({len(differing)} differ); "
        f"{n_ours} entities (luke_ner), {n_theirs} (transformers); "
        f"max |logit difference| {max_diff:.3g}; report: {args.output}"
    )
    if differing:
        print("Differing sentences: " + ", ".join(report["differing_ids"][:50]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
