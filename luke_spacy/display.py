"""A scored view of entities: displaCy's entity rendering with each entity's label and score.

    from luke_spacy.display import render_html
    Path("view.html").write_text(render_html(nlp.pipe(texts)), encoding="utf8")

`displacy.render(doc, style="ent")` shows labels only; here every entity also shows the
probability luke_ner gave its label (`doc.spans[spans_key].attrs["scores"]`). Text and labels
are HTML-escaped, so hostile input is shown, never run. Inputs are Docs or the records that
`luke-spacy annotate` writes (`{"text", "entities": [{"start", "end", "label", "score"}]}`),
error records (`--on-error record`) included: those show their error above their text (if
any), so the page holds the output's records in the output's order.

`spacy evaluate --displacy-path` draws entities only for spaCy's own `ner` factory; for a
corpus, `python -m luke_spacy.display PIPELINE DATA.spacy OUTPUT.html [--limit 25]` runs the
pipeline on the first Docs' gold tokens and sentences and writes this page.
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Optional, Sequence, Union

from spacy import displacy
from spacy.displacy.render import EntityRenderer
from spacy.displacy.templates import TPL_ENT, TPL_FIGURE, TPL_PAGE
from spacy.tokens import Doc, DocBin
from spacy.util import escape_html

from .records import scored_entities

Record = Dict[str, Any]
DocOrRecord = Union[Doc, Record]
SPANS_KEY = "luke_ner"
# displaCy's entity template with the score after the label; `{score}` is filled from each
# entity's "params", which displaCy passes on to the template.
TPL_SCORED_ENT = TPL_ENT.replace(
    "{label}{kb_link}",
    '{label}{kb_link}<span class="score" style="font-weight: normal; margin-left: 0.3em">'
    "{score}</span>",
)
if TPL_SCORED_ENT == TPL_ENT:  # a spaCy whose template has no "{label}{kb_link}"
    raise ImportError("luke_spacy.display: displaCy's entity template has changed")
PAGE_TITLE = "luke_ner entities"


def render_html(
    docs: Iterable[DocOrRecord],
    *,
    spans_key: str = SPANS_KEY,
    page: bool = True,
    digits: int = 2,
) -> str:
    """Render entities with their labels and scores as HTML, with displaCy.

    docs (Iterable[Union[Doc, Dict[str, Any]]]): Docs, or records as `luke-spacy annotate`
        writes them.
    spans_key (str): The `doc.spans` key holding luke_ner's scores (Docs only).
    page (bool): A whole HTML page; otherwise one `<div>` per input.
    digits (int): Decimals of the scores.
    RETURNS (str): The HTML.
    """
    parsed = [_parse(item, spans_key, digits) for item in docs]
    options = {"template": TPL_SCORED_ENT}
    html = displacy.render(parsed, style="ent", manual=True, page=page, options=options)
    return _titled(html) if page else html


class HtmlWriter:
    """Write a scored entity page one input at a time (for streams too long to hold).

    with HtmlWriter("view.html") as view:
        for doc in nlp.pipe(texts):
            view.add(doc)
    """

    def __init__(
        self, path: Union[str, Path], *, spans_key: str = SPANS_KEY, digits: int = 2
    ) -> None:
        self.path = Path(path)
        self.spans_key = spans_key
        self.digits = digits
        self._file: Optional[IO[str]] = None
        self._head, self._tail = _titled(TPL_PAGE).split("{content}")

    def __enter__(self) -> HtmlWriter:
        self._file = self.path.open("w", encoding="utf8")
        self._file.write(self._head.format(lang="en", dir="ltr"))
        return self

    def add(self, item: DocOrRecord) -> None:
        """Append one Doc or record to the page."""
        assert self._file is not None, "HtmlWriter is used as a context manager"
        parsed = _parse(item, self.spans_key, self.digits)
        renderer = EntityRenderer({"template": TPL_SCORED_ENT})
        self._file.write(TPL_FIGURE.format(content=renderer.render([parsed])))

    def __exit__(self, *exc_info: Any) -> None:
        if self._file is not None:
            self._file.write(self._tail)
            self._file.close()
            self._file = None


def _parse(item: DocOrRecord, spans_key: str, digits: int) -> Dict[str, Any]:
    """displaCy's manual "ent" format, labels escaped and the score a template parameter."""
    if isinstance(item, Doc):
        text, entities = item.text, scored_entities(item, (spans_key,))
    elif "error" in item:  # an error record (records.error_record): no entities
        where = f" at {item['source']}" if item.get("source") else ""
        title = escape_html(f"error{where}: {item['error']}")
        return {"text": item.get("text") or "", "ents": [], "title": title}
    else:
        text, entities = item["text"], item["entities"]
    ents = []
    for ent in sorted(entities, key=lambda e: e["start"]):
        score = ent.get("score")
        ents.append(
            {
                "start": ent["start"],
                "end": ent["end"],
                # displaCy escapes the text but writes labels as they are.
                "label": escape_html(ent["label"]),
                "params": {"score": "" if score is None else f"{score:.{digits}f}"},
            }
        )
    return {"text": text, "ents": ents}


def _titled(html: str) -> str:
    return html.replace("<title>displaCy</title>", f"<title>{PAGE_TITLE}</title>", 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Render a pipeline's entities on the first Docs of a .spacy corpus as a scored page."""
    import spacy
    from tqdm import tqdm

    from .conll import unannotated

    parser = argparse.ArgumentParser(prog="python -m luke_spacy.display", description=main.__doc__)
    parser.add_argument("pipeline", help="pipeline folder or package name")
    parser.add_argument("data", type=Path, help=".spacy DocBin (gold tokens and sentences kept)")
    parser.add_argument("output", type=Path, help="the HTML page to write")
    parser.add_argument("--limit", type=int, default=25, help="Docs to render (default: 25)")
    parser.add_argument("--spans-key", default=SPANS_KEY, help="luke_ner's spans key")
    parser.add_argument("--gpu-id", type=int, default=-1, help="GPU id, -1 for CPU")
    args = parser.parse_args(argv)
    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    nlp = spacy.load(args.pipeline)
    gold = islice(DocBin().from_disk(args.data).get_docs(nlp.vocab), args.limit)
    docs = [unannotated(doc) for doc in gold]
    with HtmlWriter(args.output, spans_key=args.spans_key) as view:
        for doc in tqdm(nlp.pipe(docs), total=len(docs), unit="doc", file=sys.stderr):
            view.add(doc)
    print(f"{len(docs)} Docs rendered: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
