"""CoNLL-2003 English NER: read the IOB1 (or IOB2) files, build spaCy Docs, check the counts.

The reader is made of pure functions; `python -m luke_spacy.conll CONLL_DIR OUTPUT_DIR` writes
`train.spacy`, `dev.spacy` and `test.spacy` DocBins and checks them against the published
figures of the corpus.

* One Doc per CoNLL document (split at `-DOCSTART-`), so `luke_ner` sees the document context
  of each sentence as LUKE's recipe does.
* Sentence boundaries (blank lines) are stored as `sent_starts`, entities as `doc.ents`.
* The Docs are built from the words alone (`spaces` unknown), so spaCy's `Corpus` (as used by
  `spacy evaluate`) keeps the gold tokens instead of re-tokenizing `doc.text`. It does not
  keep the sentence boundaries in the predicted Docs; the project's `evaluate` step restores
  them with `spacy evaluate --code scripts/gold_sentences.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc, DocBin, Span
from spacy.vocab import Vocab

LABELS = ("PER", "LOC", "ORG", "MISC")
DOCSTART = "-DOCSTART-"
# Split -> file name: the original eng.* files (IOB1), or the names LUKE's own reader takes
# (IOB2 copies named train.txt / valid.txt / test.txt). Both tag schemes read the same way.
FILE_NAMES = (
    {"train": "eng.train", "dev": "eng.testa", "test": "eng.testb"},
    {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"},
)
# Published figures of the English CoNLL-2003 data (Tjong Kim Sang and De Meulder, 2003),
# as checked in shared/data/SOURCES.md.
PUBLISHED_COUNTS: Dict[str, Dict[str, int]] = {
    "train": {
        "documents": 946,
        "sentences": 14041,
        "tokens": 203621,
        "PER": 6600,
        "LOC": 7140,
        "ORG": 6321,
        "MISC": 3438,
    },
    "dev": {
        "documents": 216,
        "sentences": 3250,
        "tokens": 51362,
        "PER": 1842,
        "LOC": 1837,
        "ORG": 1341,
        "MISC": 922,
    },
    "test": {
        "documents": 231,
        "sentences": 3453,
        "tokens": 46435,
        "PER": 1617,
        "LOC": 1668,
        "ORG": 1661,
        "MISC": 702,
    },
}

EntitySpan = Tuple[int, int, str]  # word start, word end (exclusive), label


class ConllFormatError(ValueError):
    """A CoNLL file that does not follow the expected format."""


class CountMismatch(ValueError):
    """Converted counts that differ from the published ones."""


@dataclass
class Sentence:
    """One sentence: its words and their NER tags as written in the file."""

    words: List[str] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)


@dataclass
class Document:
    """One CoNLL document (the lines between two `-DOCSTART-` lines)."""

    sentences: List[Sentence] = field(default_factory=list)

    @property
    def words(self) -> List[str]:
        return [word for sent in self.sentences for word in sent.words]


def parse_conll(lines: Iterable[str], *, source: str = "<lines>") -> List[Document]:
    """Split CoNLL lines into documents and sentences.

    Each non-blank line is `word ... tag` (the NER tag is the last column); blank lines end a
    sentence and `-DOCSTART-` lines start a document. Lines before the first `-DOCSTART-` form
    a document of their own, so files without document markers read as one document.

    lines (Iterable[str]): The lines of the file.
    source (str): Name used in error messages.
    RETURNS (List[Document]): The documents, empty ones dropped.
    """
    documents: List[Document] = [Document()]
    sentence = Sentence()

    def end_sentence() -> None:
        nonlocal sentence
        if sentence.words:
            documents[-1].sentences.append(sentence)
            sentence = Sentence()

    for number, line in enumerate(lines, start=1):
        columns = line.split()
        if not columns:
            end_sentence()
            continue
        if columns[0] == DOCSTART:
            end_sentence()
            documents.append(Document())
            continue
        if len(columns) < 2:
            raise ConllFormatError(
                f"{source}:{number}: expected 'word ... tag' columns, got {line.rstrip()!r}"
            )
        sentence.words.append(columns[0])
        sentence.tags.append(columns[-1])
    end_sentence()
    return [doc for doc in documents if doc.sentences]


def read_conll(path: Union[str, Path]) -> List[Document]:
    """Read a CoNLL-2003 file into documents (see `parse_conll`)."""
    path = Path(path)
    with path.open(encoding="utf8") as file:
        return parse_conll(file, source=str(path))


def tags_to_spans(tags: Sequence[str]) -> List[EntitySpan]:
    """Entity spans of one sentence's tags, by conlleval's chunking rule.

    `B-X` starts an entity; `I-X` continues the entity before it when that one has type X and
    starts a new entity otherwise. This reads IOB1 properly (the original eng.* files: `I-X`
    starts an entity and `B-X` only separates two adjacent entities of type X) and reads IOB2
    (`B-X` starts every entity) identically, so the scheme needs no setting. It is also how
    the published counts were made: eng.train has one `B-MISC` after `O` ("the Atlanta Games"),
    which starts an entity.

    tags (Sequence[str]): One tag per word: "O", "B-X" or "I-X".
    RETURNS (List[EntitySpan]): (start, end exclusive, label) in word order.
    """
    spans: List[EntitySpan] = []
    start: Optional[int] = None
    label: Optional[str] = None
    for i, tag in enumerate(tags):
        if tag == "O":
            prefix, tag_label = "O", None
        else:
            prefix, _, tag_label = tag.partition("-")
            if prefix not in ("B", "I") or not tag_label:
                raise ConllFormatError(f"tag {tag!r} at word {i} is not 'O', 'B-X' or 'I-X'")
        if prefix == "I" and label == tag_label:
            continue
        if start is not None:
            spans.append((start, i, label))
        start, label = (i, tag_label) if prefix != "O" else (None, None)
    if start is not None:
        spans.append((start, len(tags), label))
    return spans


def document_spans(document: Document) -> List[EntitySpan]:
    """Entity spans of a document, as word offsets into `document.words`."""
    spans: List[EntitySpan] = []
    offset = 0
    for sent in document.sentences:
        spans.extend((offset + s, offset + e, label) for s, e, label in tags_to_spans(sent.tags))
        offset += len(sent.words)
    return spans


def words_doc(
    vocab: Vocab, sentences: Iterable[Sequence[str]], *, sentence_boundaries: bool = True
) -> Doc:
    """A Doc of words given sentence by sentence, with their sentence starts.

    Spaces are left unknown (`spaces=None`), which tells spaCy's `Corpus` to keep these words
    as the predicted tokenization (`spacy evaluate`).

    sentence_boundaries (bool): Set the sentence starts; otherwise the Doc has none.
    """
    words: List[str] = []
    sent_starts: List[bool] = []
    for sentence in sentences:
        words.extend(sentence)
        sent_starts.extend(i == 0 for i in range(len(sentence)))
    return Doc(vocab, words=words, sent_starts=sent_starts if sentence_boundaries else None)


def make_doc(vocab: Vocab, document: Document) -> Doc:
    """A spaCy Doc of one document, with sentence starts and gold `doc.ents` (see `words_doc`)."""
    doc = words_doc(vocab, (sent.words for sent in document.sentences))
    doc.ents = [Span(doc, s, e, label=label) for s, e, label in document_spans(document)]
    return doc


def unannotated(doc: Doc) -> Doc:
    """A new Doc with the words and sentence starts of `doc` and nothing else: the gold
    tokens and sentences of a corpus Doc, for a pipeline to annotate."""
    return Doc(doc.vocab, words=[t.text for t in doc], sent_starts=[t.is_sent_start for t in doc])


def join_words(words: Sequence[str]) -> Tuple[str, List[Tuple[int, int]]]:
    """The words joined by single spaces, and each word's character span in that text (how
    the Hugging Face docs and LUKE's notebook build a sentence's text from CoNLL words)."""
    spans: List[Tuple[int, int]] = []
    offset = 0
    for word in words:
        spans.append((offset, offset + len(word)))
        offset += len(word) + 1
    return " ".join(words), spans


def make_docs(vocab: Vocab, documents: Iterable[Document]) -> Iterator[Doc]:
    """Docs of the documents, in order (see `make_doc`)."""
    for document in documents:
        yield make_doc(vocab, document)


def count_entities(docs: Iterable[Doc]) -> Counter:
    """Entities per label over the Docs."""
    return Counter(ent.label_ for doc in docs for ent in doc.ents)


def corpus_counts(docs: Iterable[Doc]) -> Dict[str, int]:
    """Documents, sentences, tokens and entities per label (PER, LOC, ORG, MISC first)."""
    docs = list(docs)
    entities = count_entities(docs)
    counts = {
        "documents": len(docs),
        "sentences": sum(1 for doc in docs for _ in doc.sents),
        "tokens": sum(len(doc) for doc in docs),
    }
    counts.update({label: entities.get(label, 0) for label in LABELS})
    counts.update({label: n for label, n in sorted(entities.items()) if label not in LABELS})
    counts["entities"] = sum(entities.values())
    return counts


def check_counts(split: str, counts: Dict[str, int]) -> None:
    """Raise a CountMismatch that lists every figure differing from the published one."""
    expected = PUBLISHED_COUNTS[split]
    wrong = [
        f"{key}: got {counts.get(key, 0)}, published {value}"
        for key, value in expected.items()
        if counts.get(key, 0) != value
    ]
    if wrong:
        raise CountMismatch(
            f"The {split} split does not match the published CoNLL-2003 counts ("
            + "; ".join(wrong)
            + "). Check that the files are the original English CoNLL-2003 data "
            "(see the checksums in project.yml)."
        )


def split_path(conll_dir: Union[str, Path], split: str) -> Path:
    """The file of a split: eng.train/eng.testa/eng.testb, else train.txt/valid.txt/test.txt."""
    conll_dir = Path(conll_dir)
    for names in FILE_NAMES:
        if (conll_dir / names[split]).exists():
            return conll_dir / names[split]
    raise FileNotFoundError(
        f"{conll_dir / FILE_NAMES[0][split]} not found. Put the CoNLL-2003 English files in "
        f"{conll_dir} (run `spacy project assets`) or point conll_dir at the folder that holds "
        "them."
    )


def convert(
    conll_dir: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    max_docs: int = 0,
    splits: Sequence[str] = ("train", "dev", "test"),
    check: bool = True,
) -> Dict[str, Dict[str, int]]:
    """Convert the CoNLL-2003 files of a folder into `{split}.spacy` DocBins.

    conll_dir (str | Path): Folder with eng.train, eng.testa and eng.testb, or train.txt,
        valid.txt and test.txt (see `split_path`).
    output_dir (str | Path): Folder for train.spacy, dev.spacy, test.spacy and counts.json.
    max_docs (int): Keep only the first N documents of each split (0 = all).
    splits (Sequence[str]): The splits to convert.
    check (bool): With max_docs 0, fail unless the counts equal the published ones.
    RETURNS (Dict[str, Dict[str, int]]): The counts of each split.
    """
    if max_docs < 0:
        raise ValueError(f"max_docs must be 0 (all) or positive, got {max_docs}")
    conll_dir, output_dir = Path(conll_dir), Path(output_dir)
    vocab = Vocab()
    all_counts: Dict[str, Dict[str, int]] = {}
    for split in splits:
        path = split_path(conll_dir, split)
        documents = read_conll(path)
        if max_docs:
            documents = documents[:max_docs]
        docs = list(make_docs(vocab, documents))
        all_counts[split] = corpus_counts(docs)
        output_dir.mkdir(parents=True, exist_ok=True)
        DocBin(attrs=["ORTH", "SENT_START", "ENT_IOB", "ENT_TYPE"], docs=docs).to_disk(
            output_dir / f"{split}.spacy"
        )
    (output_dir / "counts.json").write_text(
        json.dumps({"max_docs": max_docs, "counts": all_counts}, indent=2) + "\n",
        encoding="utf8",
    )
    if check and not max_docs:
        for split, counts in all_counts.items():
            check_counts(split, counts)
    return all_counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m luke_spacy.conll",
        description="Convert CoNLL-2003 English NER files into spaCy DocBins "
        "(train.spacy, dev.spacy, test.spacy; one Doc per document).",
    )
    parser.add_argument("conll_dir", type=Path, help="folder with eng.train/testa/testb")
    parser.add_argument("output_dir", type=Path, help="folder for the .spacy files")
    parser.add_argument(
        "--max-docs", type=int, default=0, help="first N documents of each split (0 = all)"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="do not compare with the published counts"
    )
    args = parser.parse_args(argv)
    try:
        all_counts = convert(
            args.conll_dir,
            args.output_dir,
            max_docs=args.max_docs,
            check=not args.no_check,
        )
    except (CountMismatch, ConllFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for split, counts in all_counts.items():
        print(f"{split}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    if args.max_docs:
        print(f"max_docs = {args.max_docs}: counts not compared with the published ones.")
    elif not args.no_check:
        print("Counts equal the published CoNLL-2003 figures.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
