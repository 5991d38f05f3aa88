"""GENIA nested biomedical NER: read the JSON-lines files, build spaCy Docs with nested gold.

The reader is made of pure functions; `python -m luke_spacy.genia GENIA_DIR OUTPUT_DIR` writes
`dev.spacy` and `test.spacy` DocBins (and `train.spacy` when the folder has a train file) and
checks them against the figures of this preprocessing.

* Input: one JSON object per sentence (`tokens`, `doc_id`, `sent_id`, `entity_mentions` with
  word `start`, exclusive `end`, `entity_type` and `text`), the format of the GENIA files in
  yhcc/CNN_Nested_NER; the sentences of a document are consecutive.
* One Doc per document (MEDLINE abstract), sentence boundaries as `sent_starts`, words as
  given (`spaces` unknown, so spaCy's `Corpus` keeps the gold tokens; see luke_spacy.conll).
* The nested gold, every entity with its own label (containment allowed; a span annotated
  with two types is there twice), goes to `doc.spans[spans_key]` (default "genia").
* `doc.ents` holds a flat projection (`flat_projection`): longest entities first, each kept
  unless it overlaps one already kept. GENIA has no crossing entities, so this keeps exactly
  the outermost entities and drops every entity nested inside another (the "inner" ones),
  plus, where one span has two types, the second in file order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

from spacy.tokens import Doc, DocBin, Span
from spacy.vocab import Vocab

from .conll import CountMismatch, EntitySpan, words_doc

LABELS = ("DNA", "protein", "cell_line", "cell_type", "RNA")
SPANS_KEY = "genia"
FILE_NAMES = {"train": "train.jsonlines", "dev": "dev.jsonlines", "test": "test.jsonlines"}
# Figures of these files (yhcc/CNN_Nested_NER's preprocessing of GENIA 3.02), as listed in
# shared/data/SOURCES.md; `inner` counts entities inside another entity of another span.
PUBLISHED_COUNTS: Dict[str, Dict[str, int]] = {
    "dev": {
        "documents": 199,
        "sentences": 1765,
        "tokens": 45495,
        "entities": 4714,
        "inner": 444,
        "DNA": 1161,
        "protein": 2466,
        "cell_line": 372,
        "cell_type": 576,
        "RNA": 139,
    },
    "test": {
        "documents": 199,
        "sentences": 1732,
        "tokens": 46873,
        "entities": 5119,
        "inner": 603,
        "DNA": 1132,
        "protein": 2900,
        "cell_line": 403,
        "cell_type": 578,
        "RNA": 106,
    },
}


class GeniaFormatError(ValueError):
    """A GENIA JSON-lines file that does not follow the expected format."""


@dataclass
class Sentence:
    """One sentence: its words and its entities as (start, end exclusive, label) word offsets."""

    words: List[str] = field(default_factory=list)
    entities: List[EntitySpan] = field(default_factory=list)


@dataclass
class Document:
    """One GENIA document (a MEDLINE abstract): its id and consecutive sentences."""

    doc_id: str
    sentences: List[Sentence] = field(default_factory=list)

    @property
    def words(self) -> List[str]:
        return [word for sent in self.sentences for word in sent.words]

    @property
    def entities(self) -> List[EntitySpan]:
        """All entities in file order, as word offsets into `words`."""
        spans: List[EntitySpan] = []
        offset = 0
        for sent in self.sentences:
            spans.extend((offset + s, offset + e, label) for s, e, label in sent.entities)
            offset += len(sent.words)
        return spans


def parse_sentence(record: dict, *, where: str = "<record>") -> Sentence:
    """A Sentence from one JSON record; fields, offsets and the `text` of each mention are
    checked, so a damaged line is refused with its place."""
    if not isinstance(record, dict):
        raise GeniaFormatError(f"{where}: not a JSON object")
    try:
        words = record["tokens"]
        mentions = record["entity_mentions"]
    except KeyError as err:
        raise GeniaFormatError(f"{where}: missing field {err}") from None
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise GeniaFormatError(f"{where}: 'tokens' is not a list of strings")
    if not isinstance(mentions, list):
        raise GeniaFormatError(f"{where}: 'entity_mentions' is not a list")
    entities: List[EntitySpan] = []
    for mention in mentions:
        try:
            start, end, label = mention["start"], mention["end"], mention["entity_type"]
        except (KeyError, TypeError):
            raise GeniaFormatError(
                f"{where}: an entity mention without 'start', 'end' and 'entity_type': {mention!r}"
            ) from None
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (start, end)):
            raise GeniaFormatError(f"{where}: entity offsets are not integers: {mention!r}")
        if not isinstance(label, str) or not label:
            raise GeniaFormatError(f"{where}: entity type is not a name: {mention!r}")
        if not 0 <= start < end <= len(words):
            raise GeniaFormatError(
                f"{where}: entity [{start}, {end}) is outside the sentence's {len(words)} words"
            )
        text = mention.get("text")
        if text is not None and text != " ".join(words[start:end]):
            raise GeniaFormatError(
                f"{where}: entity [{start}, {end}) reads {' '.join(words[start:end])!r}, "
                f"but its text is {text!r}"
            )
        entities.append((start, end, label))
    return Sentence(words, entities)


def parse_genia(lines: Iterable[str], *, source: str = "<lines>") -> List[Document]:
    """Group the JSON lines (one sentence each) into documents by `doc_id`.

    lines (Iterable[str]): The lines of the file; blank lines are skipped.
    source (str): Name used in error messages.
    RETURNS (List[Document]): The documents in file order.
    """
    documents: List[Document] = []
    seen = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise GeniaFormatError(f"{where}: not JSON ({err})") from None
        if not isinstance(record, dict):
            raise GeniaFormatError(f"{where}: not a JSON object")
        doc_id = record.get("doc_id")
        if doc_id is None:
            raise GeniaFormatError(f"{where}: missing field 'doc_id'")
        if not documents or documents[-1].doc_id != doc_id:
            # A document split in two would silently lose its context.
            if doc_id in seen:
                raise GeniaFormatError(
                    f"{where}: the sentences of document {doc_id!r} are not consecutive"
                )
            seen.add(doc_id)
            documents.append(Document(doc_id))
        documents[-1].sentences.append(parse_sentence(record, where=where))
    return documents


def read_genia(path: Union[str, Path]) -> List[Document]:
    """Read a GENIA JSON-lines file into documents (see `parse_genia`)."""
    path = Path(path)
    with path.open(encoding="utf8") as file:
        return parse_genia(file, source=str(path))


def flat_projection(entities: Sequence[EntitySpan]) -> List[EntitySpan]:
    """The non-overlapping entities that `doc.ents` can hold: longest first (then earlier
    start, then input order), each kept unless it overlaps one kept before. Without crossing
    entities these are the outermost ones.

    RETURNS (List[EntitySpan]): The kept entities, in word order.
    """
    order = sorted(
        range(len(entities)), key=lambda i: (entities[i][0] - entities[i][1], entities[i][0], i)
    )
    taken: set = set()
    kept: List[EntitySpan] = []
    for i in order:
        start, end, _ = entities[i]
        if taken.isdisjoint(range(start, end)):
            taken.update(range(start, end))
            kept.append(entities[i])
    return sorted(kept)


def inner_entities(entities: Sequence[EntitySpan]) -> List[EntitySpan]:
    """Entities that lie inside another entity of a different span (nested ones), in input
    order. A span annotated with two types is not inside itself."""
    spans = {(start, end) for start, end, _ in entities}
    return [
        (start, end, label)
        for start, end, label in entities
        if any(s <= start and end <= e and (s, e) != (start, end) for s, e in spans)
    ]


def make_doc(vocab: Vocab, document: Document, *, spans_key: str = SPANS_KEY) -> Doc:
    """A Doc of one document: sentence starts, every entity in `doc.spans[spans_key]` and the
    flat projection in `doc.ents`; `doc.user_data["doc_id"]` is the document's id."""
    doc = words_doc(vocab, (sent.words for sent in document.sentences))
    entities = document.entities
    doc.spans[spans_key] = [Span(doc, s, e, label=label) for s, e, label in entities]
    doc.ents = [Span(doc, s, e, label=label) for s, e, label in flat_projection(entities)]
    doc.user_data["doc_id"] = document.doc_id
    return doc


def make_docs(
    vocab: Vocab, documents: Iterable[Document], *, spans_key: str = SPANS_KEY
) -> Iterator[Doc]:
    """Docs of the documents, in order (see `make_doc`)."""
    for document in documents:
        yield make_doc(vocab, document, spans_key=spans_key)


def corpus_counts(docs: Iterable[Doc], *, spans_key: str = SPANS_KEY) -> Dict[str, object]:
    """Documents, sentences, tokens, entities (all, per type, inner, longest) and what the
    flat projection in `doc.ents` keeps of them."""
    counts: Counter = Counter()
    labels: Counter = Counter()
    inner: Counter = Counter()
    lengths: Counter = Counter()
    for doc in docs:
        entities = [(span.start, span.end, span.label_) for span in doc.spans[spans_key]]
        counts["documents"] += 1
        counts["sentences"] += sum(1 for _ in doc.sents)
        counts["tokens"] += len(doc)
        counts["entities"] += len(entities)
        counts["ents"] += len(doc.ents)
        counts["same_span_other_type"] += len(entities) - len({e[:2] for e in entities})
        labels.update(label for _, _, label in entities)
        inner.update(label for _, _, label in inner_entities(entities))
        lengths.update(end - start for start, end, _ in entities)
    result: Dict[str, object] = {
        key: counts[key] for key in ("documents", "sentences", "tokens", "entities")
    }
    result["inner"] = sum(inner.values())
    result.update({label: labels.get(label, 0) for label in LABELS})
    result.update({label: n for label, n in sorted(labels.items()) if label not in LABELS})
    result["inner_per_type"] = dict(sorted(inner.items()))
    result["same_span_other_type"] = counts["same_span_other_type"]
    result["flat_ents"] = counts["ents"]
    result["dropped_by_flat_projection"] = counts["entities"] - counts["ents"]
    result["entity_lengths"] = {str(n): lengths[n] for n in sorted(lengths)}
    return result


def check_counts(split: str, counts: Dict[str, object]) -> None:
    """Raise a CountMismatch listing every figure that differs from `PUBLISHED_COUNTS`."""
    wrong = [
        f"{key}: got {counts.get(key, 0)}, expected {value}"
        for key, value in PUBLISHED_COUNTS[split].items()
        if counts.get(key, 0) != value
    ]
    if wrong:
        raise CountMismatch(
            f"The GENIA {split} split does not match the expected counts ({'; '.join(wrong)}). "
            "Check that the files are yhcc/CNN_Nested_NER's genia/*.jsonlines "
            "(see shared/data/SOURCES.md)."
        )


def split_path(genia_dir: Union[str, Path], split: str) -> Path:
    """The file of a split: train.jsonlines, dev.jsonlines or test.jsonlines."""
    path = Path(genia_dir) / FILE_NAMES[split]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected GENIA's {split} split there.")
    return path


def convert(
    genia_dir: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    splits: Optional[Sequence[str]] = None,
    max_docs: int = 0,
    spans_key: str = SPANS_KEY,
    holdout_docs: int = 0,
    check: bool = True,
) -> Dict[str, Dict[str, object]]:
    """Convert GENIA JSON-lines files into `{split}.spacy` DocBins and counts.json.

    genia_dir (str | Path): Folder with dev.jsonlines and test.jsonlines (train.jsonlines too
        when present).
    output_dir (str | Path): Folder for the .spacy files and counts.json.
    splits (Optional[Sequence[str]]): The splits to convert; None: those present.
    max_docs (int): Keep only the first N documents of each split (0 = all).
    spans_key (str): The `doc.spans` key of the nested gold.
    holdout_docs (int): Also split dev into dev-train.spacy (all but its last N documents)
        and dev-holdout.spacy (the last N), to train on dev and select the model on data
        that is neither trained on nor the test split.
    check (bool): With max_docs 0, fail unless the counts equal `PUBLISHED_COUNTS`.
    RETURNS (Dict[str, Dict[str, object]]): The counts of each file written.
    """
    if max_docs < 0 or holdout_docs < 0:
        raise ValueError("max_docs and holdout_docs must be 0 or positive")
    genia_dir, output_dir = Path(genia_dir), Path(output_dir)
    if splits is None:
        splits = [split for split, name in FILE_NAMES.items() if (genia_dir / name).exists()]
        if not splits:
            raise FileNotFoundError(
                f"No GENIA files ({', '.join(FILE_NAMES.values())}) in {genia_dir}"
            )
    vocab = Vocab()
    output_dir.mkdir(parents=True, exist_ok=True)
    parts: Dict[str, List[Doc]] = {}
    for split in splits:
        documents = read_genia(split_path(genia_dir, split))
        if max_docs:
            documents = documents[:max_docs]
        parts[split] = list(make_docs(vocab, documents, spans_key=spans_key))
    if holdout_docs and "dev" in parts:
        if holdout_docs >= len(parts["dev"]):
            raise ValueError(f"holdout_docs {holdout_docs} leaves no dev document to train on")
        parts["dev-train"] = parts["dev"][:-holdout_docs]
        parts["dev-holdout"] = parts["dev"][-holdout_docs:]
    all_counts = {}
    for name, docs in parts.items():
        all_counts[name] = corpus_counts(docs, spans_key=spans_key)
        DocBin(
            attrs=["ORTH", "SENT_START", "ENT_IOB", "ENT_TYPE"], docs=docs, store_user_data=True
        ).to_disk(output_dir / f"{name}.spacy")
    summary = {"max_docs": max_docs, "spans_key": spans_key, "holdout_docs": holdout_docs}
    (output_dir / "counts.json").write_text(
        json.dumps({**summary, "counts": all_counts}, indent=2) + "\n", encoding="utf8"
    )
    if check and not max_docs:
        for split in splits:
            if split in PUBLISHED_COUNTS:
                check_counts(split, all_counts[split])
    return all_counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m luke_spacy.genia",
        description="Convert GENIA nested NER JSON lines into spaCy DocBins (one Doc per "
        "document; nested gold in doc.spans, a flat projection in doc.ents).",
    )
    parser.add_argument("genia_dir", type=Path, help="folder with dev/test.jsonlines")
    parser.add_argument("output_dir", type=Path, help="folder for the .spacy files")
    parser.add_argument(
        "--max-docs", type=int, default=0, help="first N documents of each split (0 = all)"
    )
    parser.add_argument("--spans-key", default=SPANS_KEY, help="doc.spans key of the gold")
    parser.add_argument(
        "--holdout-docs",
        type=int,
        default=0,
        help="also write dev-train.spacy and dev-holdout.spacy (the last N dev documents)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="do not compare with the expected counts"
    )
    args = parser.parse_args(argv)
    try:
        all_counts = convert(
            args.genia_dir,
            args.output_dir,
            max_docs=args.max_docs,
            spans_key=args.spans_key,
            holdout_docs=args.holdout_docs,
            check=not args.no_check,
        )
    except (CountMismatch, GeniaFormatError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, counts in all_counts.items():
        flat = {key: value for key, value in counts.items() if not isinstance(value, dict)}
        print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in flat.items()))
    if args.max_docs:
        print(f"max_docs = {args.max_docs}: counts not compared with the expected ones.")
    elif not args.no_check:
        print("Counts equal the expected GENIA figures.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
