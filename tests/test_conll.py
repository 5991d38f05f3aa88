"""CoNLL-2003 reading and conversion (luke_spacy.conll)."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from luke_spacy.conll import (
    PUBLISHED_COUNTS,
    ConllFormatError,
    CountMismatch,
    check_counts,
    convert,
    corpus_counts,
    join_words,
    main,
    make_doc,
    make_docs,
    parse_conll,
    read_conll,
    tags_to_spans,
    unannotated,
    words_doc,
)

SAMPLE = """\
-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

In IN I-PP O
Germany NNP I-NP I-LOC
Hans NNP I-NP I-PER
Peter NNP I-NP B-PER
Smith NNP I-NP I-PER
met VBD I-VP O
Bonn NNP I-NP I-LOC
Berlin NNP I-NP B-LOC
. . O O
"""


@pytest.mark.parametrize(
    "tags,spans",
    [
        # IOB1: I- starts an entity...
        (["I-PER", "I-PER", "O", "I-LOC"], [(0, 2, "PER"), (3, 4, "LOC")]),
        # ...unless it continues one of the same type; another type starts a new one.
        (["I-PER", "I-ORG", "I-ORG"], [(0, 1, "PER"), (1, 3, "ORG")]),
        # B- separates two adjacent entities of the same type.
        (["I-PER", "B-PER", "I-PER", "O"], [(0, 1, "PER"), (1, 3, "PER")]),
        (["I-LOC", "B-LOC", "B-LOC"], [(0, 1, "LOC"), (1, 2, "LOC"), (2, 3, "LOC")]),
        # An entity at the end of the sentence.
        (["O", "I-MISC", "I-MISC"], [(1, 3, "MISC")]),
        # A B- after O (eng.train has one) starts an entity, as conlleval counts it.
        (["O", "B-MISC", "I-MISC"], [(1, 3, "MISC")]),
        # IOB2 reads the same way.
        (["B-PER", "I-PER", "B-PER", "O", "B-LOC"], [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC")]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_tags_to_spans(tags, spans):
    assert tags_to_spans(tags) == spans


@pytest.mark.parametrize("tag", ["X-PER", "B-", "PER", "I"])
def test_tags_to_spans_rejects_bad_tags(tag):
    with pytest.raises(ConllFormatError, match="is not 'O', 'B-X' or 'I-X'"):
        tags_to_spans(["O", tag])


def test_parse_conll_documents_and_sentences():
    docs = parse_conll(SAMPLE.splitlines())
    assert len(docs) == 2
    assert [len(doc.sentences) for doc in docs] == [2, 1]
    assert docs[0].sentences[1].words == ["Peter", "Blackburn"]
    assert docs[1].words[:2] == ["In", "Germany"]
    # Lines before any -DOCSTART- form a document; blank-line runs add no empty sentences.
    docs = parse_conll(["a x O", "", "", "b x I-PER", "-DOCSTART- -X- O O", "", "c x O"])
    assert [[s.words for s in d.sentences] for d in docs] == [[["a"], ["b"]], [["c"]]]


def test_parse_conll_bad_line():
    with pytest.raises(ConllFormatError, match="f.txt:2"):
        parse_conll(["a x O", "lonely"], source="f.txt")


def test_words_doc_with_and_without_sentence_boundaries():
    sentences = [["EU", "rejects", "it", "."], ["Peter", "Blackburn"]]
    doc = words_doc(Vocab(), sentences)
    assert [s.text for s in doc.sents] == ["EU rejects it .", "Peter Blackburn"]
    assert doc.has_unknown_spaces
    plain = words_doc(Vocab(), sentences, sentence_boundaries=False)
    assert [t.text for t in plain] == [t.text for t in doc]
    assert not plain.has_annotation("SENT_START")


def test_unannotated_keeps_words_and_sentences_only():
    gold = make_doc(Vocab(), parse_conll(SAMPLE.splitlines())[0])
    doc = unannotated(gold)
    assert doc is not gold and doc.vocab is gold.vocab
    assert [t.text for t in doc] == [t.text for t in gold]
    assert [s.text for s in doc.sents] == [s.text for s in gold.sents]
    assert gold.ents and not doc.ents


def test_join_words_character_spans():
    text, spans = join_words(["Peter", "'s", "EU"])
    assert text == "Peter 's EU"
    assert [text[a:b] for a, b in spans] == ["Peter", "'s", "EU"]
    assert join_words([]) == ("", [])


def test_make_doc_sentences_and_entities():
    vocab = Vocab()
    docs = list(make_docs(vocab, parse_conll(SAMPLE.splitlines())))
    doc = docs[1]
    assert [t.text for t in doc] == "In Germany Hans Peter Smith met Bonn Berlin .".split()
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("Germany", "LOC"),
        ("Hans", "PER"),
        ("Peter Smith", "PER"),
        ("Bonn", "LOC"),
        ("Berlin", "LOC"),
    ]
    first = docs[0]
    assert [s.text for s in first.sents] == ["EU rejects German call .", "Peter Blackburn"]
    assert [(e.text, e.label_) for e in first.ents] == [
        ("EU", "ORG"),
        ("German", "MISC"),
        ("Peter Blackburn", "PER"),
    ]
    # Unknown spaces: spaCy's Corpus keeps these words instead of re-tokenizing the text.
    assert first.has_unknown_spaces
    restored = list(DocBin(docs=docs).get_docs(Vocab()))

    def annotations(d):
        return [s.text for s in d.sents], [(e.start, e.end, e.label_) for e in d.ents]

    assert [annotations(d) for d in restored] == [annotations(d) for d in docs]
    assert all(d.has_unknown_spaces for d in restored)


def test_corpus_counts_and_check():
    docs = list(make_docs(Vocab(), parse_conll(SAMPLE.splitlines())))
    counts = corpus_counts(docs)
    assert counts == {
        "documents": 2,
        "sentences": 3,
        "tokens": 16,
        "PER": 3,
        "LOC": 3,
        "ORG": 1,
        "MISC": 1,
        "entities": 8,
    }
    with pytest.raises(CountMismatch, match="documents: got 2, published 231"):
        check_counts("test", counts)


def _write_split_files(folder, text=SAMPLE):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (folder / name).write_text(text, encoding="utf8")
    return folder


def test_convert_fails_loudly_on_count_mismatch(tmp_path, capsys):
    conll = _write_split_files(tmp_path / "conll")
    assert main([str(conll), str(tmp_path / "corpus")]) == 1
    err = capsys.readouterr().err
    assert "does not match the published CoNLL-2003 counts" in err
    assert "PER: got 3, published 6600" in err


def test_convert_max_docs(tmp_path, capsys):
    conll = _write_split_files(tmp_path / "conll")
    out = tmp_path / "corpus"
    assert main([str(conll), str(out), "--max-docs", "1"]) == 0
    assert "not compared" in capsys.readouterr().out
    for split in ("train", "dev", "test"):
        docs = list(DocBin().from_disk(out / f"{split}.spacy").get_docs(Vocab()))
        assert len(docs) == 1 and len(list(docs[0].sents)) == 2
    counts = json.loads((out / "counts.json").read_text())
    assert counts["max_docs"] == 1 and counts["counts"]["test"]["documents"] == 1


def test_convert_missing_file(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "eng.train not found" in capsys.readouterr().err


def test_full_test_set_counts():
    path = shared_path("conll2003", "eng.testb")
    counts = corpus_counts(make_doc(Vocab(), doc) for doc in read_conll(path))
    assert {k: counts[k] for k in PUBLISHED_COUNTS["test"]} == PUBLISHED_COUNTS["test"]
    assert (counts["PER"], counts["LOC"], counts["ORG"], counts["MISC"]) == (1617, 1668, 1661, 702)


def test_iob2_copy_reads_the_same():
    iob1 = read_conll(shared_path("conll2003", "eng.testb"))
    iob2 = read_conll(shared_path("conll2003", "iob2", "test.txt"))
    spans1 = [tags_to_spans(s.tags) for d in iob1 for s in d.sentences]
    spans2 = [tags_to_spans(s.tags) for d in iob2 for s in d.sentences]
    assert spans1 == spans2


@pytest.mark.slow
def test_convert_all_splits_match_published(tmp_path):
    conll = shared_path("conll2003")
    counts = convert(conll, tmp_path)
    for split, expected in PUBLISHED_COUNTS.items():
        assert {k: counts[split][k] for k in expected} == expected
