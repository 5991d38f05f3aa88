"""The scored entity page (luke_spacy.display), also as a real headless browser shows it."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from typing import List

import pytest
from conftest import make_nlp

from luke_spacy.cli import main as cli_main
from luke_spacy.display import HtmlWriter, render_html

# Each would change the page if it ran: the title, or a <pwned> element in the body.
HOSTILE = [
    "Peter met <script>document.title='pwned'</script> Obama in Paris .",
    "EU rejects <img src=x onerror=\"document.body.append(document.createElement('pwned'))\"> .",
    'She said " onmouseover="document.title=\'pwned\'" to Germany .',
]
HOSTILE_RECORD = {
    "text": "Label test .",
    "entities": [
        {
            "start": 0,
            "end": 5,
            "label": '<img src=x onerror="document.title=1">',
            "score": 1,
        }
    ],
}
TITLE = "luke_ner entities"


class Marks(HTMLParser):
    """The tags of a page, its title and text, and the text of each entity (`<mark>`)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: List[str] = []
        self.marks: List[str] = []
        self.title = ""
        self.text = ""
        self._depth = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag == "mark":
            self._depth += 1
            self.marks.append("")

    def handle_endtag(self, tag):
        self._in_title = False
        if tag == "mark":
            self._depth -= 1

    def handle_data(self, data):
        self.text += data
        if self._in_title:
            self.title += data
        if self._depth:
            self.marks[-1] += data


def parse(html: str) -> Marks:
    marks = Marks()
    marks.feed(html)
    return marks


def expected_marks(docs) -> List[str]:
    """Entity text, label and score, as the page shows them (whitespace collapsed)."""
    out = []
    for doc in docs:
        scores = dict(zip(doc.spans["luke_ner"], doc.spans["luke_ner"].attrs["scores"]))
        for ent in doc.ents:
            out.append(f"{ent.text} {ent.label_}{scores[ent]:.2f}")
    return out


def shown(marks: Marks) -> List[str]:
    return [" ".join(text.split()) for text in marks.marks]


@pytest.fixture(scope="module")
def docs(tiny_luke):
    docs = list(make_nlp(tiny_luke).pipe(HOSTILE))
    assert sum(len(doc.ents) for doc in docs) > 0, "the tiny model found no entity to show"
    return docs


def test_every_entity_shows_label_and_score(docs):
    marks = parse(render_html(docs))
    assert shown(marks) == expected_marks(docs)
    assert marks.title == TITLE


def test_hostile_text_and_labels_are_escaped(docs):
    html = render_html(docs + [HOSTILE_RECORD])
    marks = parse(html)
    assert "script" not in marks.tags and "img" not in marks.tags
    assert "&lt;script" in html and "&lt;img" in html and "onmouseover=&quot;" in html
    assert shown(marks)[-1] == 'Label <img src=x onerror="document.title=1">1.00'


def test_html_writer_streams_the_same_entities(docs, tmp_path):
    path = tmp_path / "view.html"
    with HtmlWriter(path) as view:
        for doc in docs:
            view.add(doc)
    marks = parse(path.read_text(encoding="utf8"))
    assert shown(marks) == expected_marks(docs)
    assert marks.tags.count("figure") == len(docs)


def test_annotate_html_option(tiny_luke, tmp_path, capsys):
    path = tmp_path / "view.html"
    code = cli_main(["annotate", *HOSTILE, "--model", str(tiny_luke), "--html", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    marks = parse(path.read_text(encoding="utf8"))
    assert shown(marks) == [
        f"{ent['text']} {ent['label']}{ent['score']:.2f}"
        for record in records
        for ent in record["entities"]
    ]


def test_error_records_of_annotate_are_rendered(tiny_luke, tmp_path, capsys):
    # Issue 17 item 9: render_html took annotate's records but failed on its error records.
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": HOSTILE[0]}), "{oops <b>", json.dumps({"text": 3, "id": 1})]
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    view = tmp_path / "view.html"
    argv = ["annotate", "-i", str(path), "--model", str(tiny_luke), "--no-progress"]
    code = cli_main([*argv, "--on-error", "record", "--html", str(view)])
    out = capsys.readouterr().out
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert ["error" in record for record in records] == [False, True, True]
    marks = parse(render_html(records))
    assert marks.tags.count("figure") == 3 and "b" not in marks.tags  # escaped
    assert f"error at {path}:2: invalid JSON" in marks.text
    assert f"error at {path}:3: 'text' is a number, not a string" in marks.text
    assert shown(marks) == [
        f"{ent['text']} {ent['label']}{ent['score']:.2f}" for ent in records[0]["entities"]
    ]
    # The --html page shows what the output holds, error records included.
    page = parse(view.read_text(encoding="utf8"))
    assert page.text.split() == marks.text.split()


def test_corpus_page_for_evaluation_docs(tiny_luke, tmp_path, capsys):
    """`python -m luke_spacy.display PIPELINE DATA OUT`: what `spacy evaluate --displacy-path`
    cannot draw for luke_ner, on the corpus' gold tokens and sentences."""
    from spacy.tokens import DocBin

    from luke_spacy.conll import words_doc
    from luke_spacy.display import main

    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    sentences = [text.split() for text in HOSTILE]
    gold = [words_doc(nlp.vocab, sentences), words_doc(nlp.vocab, sentences[:1])] * 2
    DocBin(docs=gold).to_disk(tmp_path / "test.spacy")
    out = tmp_path / "view.html"
    assert (
        main([str(tmp_path / "pipeline"), str(tmp_path / "test.spacy"), str(out), "--limit", "3"])
        == 0
    )
    marks = parse(out.read_text(encoding="utf8"))
    assert marks.tags.count("figure") == 3
    expected = expected_marks(
        nlp.pipe(words_doc(nlp.vocab, s) for s in [sentences, sentences[:1], sentences])
    )
    assert shown(marks) == expected


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")


@pytest.mark.slow  # a headless browser: ~5-20 s
def test_page_in_headless_chromium(docs, tmp_path):
    """A real browser renders the page: every entity with label and score, the hostile text
    shown as text, and none of its scripts run (the title and the body stay ours)."""
    browser = chromium()
    page = tmp_path / "view.html"
    page.write_text(render_html(docs + [HOSTILE_RECORD]), encoding="utf8")
    shot = tmp_path / "view.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    dom = parse(proc.stdout)
    assert dom.title == TITLE
    assert "pwned" not in dom.tags and "img" not in dom.tags and "script" not in dom.tags
    assert shown(dom)[:-1] == expected_marks(docs)
    assert len(shown(dom)) == sum(len(doc.ents) for doc in docs) + 1
    assert "<script" in dom.text and "<img src=x" in dom.text  # shown as text
