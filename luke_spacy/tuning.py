"""Per-label thresholds and a temperature, tuned on a dev corpus: `luke-spacy tune-thresholds`.

    luke-spacy tune-thresholds PIPELINE dev.spacy OUT [--target ents|nested] [--temperature]

The pipeline scores every candidate span of the dev Docs once (their gold words and sentence
boundaries); everything after that is decoding of those logits with numpy. Each label's
threshold is chosen on a grid to maximize that label's F1, label after label, in rounds until
no threshold moves (thresholds interact a little: a span that one label's threshold drops
frees its words for another's in `doc.ents`); a threshold moves only for a strictly higher F1,
so a label that gains nothing keeps the pipeline's threshold. `--temperature` first fits one
temperature by minimizing the negative log-likelihood of every candidate span's gold label
(no-entity included), and reports the expected calibration error of the output entities'
scores before and after. OUT is the pipeline with the tuned `threshold` table (and
`temperature`, `nil_veto`) in its config; an existing OUT is never overwritten without
`--force`. The algorithm is pure numpy; spaCy is only imported by the command.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy

from .decoding import (
    Candidates,
    decode_candidates,
    entity_candidates,
    label_thresholds,
    log_softmax,
)
from .errors import CLIError
from .outputs import check_new_folder, same_file

Entity = Tuple[int, int, str]
ALL = "(all)"
ECE_BINS = 15


@dataclass
class ScoredCorpus:
    """Every candidate span of a corpus with its logits, and the gold entities.

    spans (List[numpy.ndarray]): (n, 2) candidate word spans of each Doc.
    logits (List[numpy.ndarray]): (n, n_labels) their logits.
    gold (List[Set[Entity]]): Each Doc's gold (start, end, label) entities.
    labels (List[str]): All labels in id order (0 is no-entity).
    targets (List[numpy.ndarray]): (n,) each candidate span's gold label id as training sees
        it (`training.span_targets`: 0 for no entity, the first label of a span with two).
    """

    spans: List[numpy.ndarray]
    logits: List[numpy.ndarray]
    gold: List[Set[Entity]]
    labels: List[str]
    targets: List[numpy.ndarray]


@dataclass
class Decoding:
    """How a corpus is decoded: the settings that tuning changes.

    threshold (Dict[str, float]): Each entity label's threshold.
    temperature (float): Divides the logits before the softmax.
    nil_veto (bool): Spans whose best label is no-entity never compete.
    nested (bool): The nested decoding instead of the flat one.
    """

    threshold: Dict[str, float]
    temperature: float = 1.0
    nil_veto: bool = True
    nested: bool = False

    @classmethod
    def from_settings(cls, settings: Any, labels: Sequence[str], nested: bool = False) -> Decoding:
        """The decoding a component's settings give: its threshold (a number or a table) as
        one threshold per entity label, its temperature and nil_veto.

        settings (NerSettings): The component's settings.
        labels (Sequence[str]): The labels by id, no-entity first.
        nested (bool): Decode the nested group instead of doc.ents.
        """
        threshold = settings.threshold
        if isinstance(threshold, dict):
            table = {label: threshold.get(label, 0.0) for label in labels[1:]}
        else:
            table = dict.fromkeys(labels[1:], float(threshold))
        return cls(table, settings.temperature, settings.nil_veto, nested)

    def cuts(self, labels: Sequence[str]) -> numpy.ndarray:
        """One threshold per label id."""
        return numpy.asarray(label_thresholds(self.threshold, labels))


@dataclass
class Scores:
    """P/R/F1 of one label (or of all) with the counts."""

    tp: int = 0
    predicted: int = 0
    gold: int = 0

    @property
    def p(self) -> float:
        return self.tp / self.predicted if self.predicted else 0.0

    @property
    def r(self) -> float:
        return self.tp / self.gold if self.gold else 0.0

    @property
    def f(self) -> float:
        return 2 * self.tp / (self.predicted + self.gold) if self.predicted + self.gold else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "p": self.p,
            "r": self.r,
            "f": self.f,
            "tp": self.tp,
            "predicted": self.predicted,
            "gold": self.gold,
        }


@dataclass
class Outcome:
    """The entities a decoding gives on a corpus, scored."""

    per_label: Dict[str, Scores] = field(default_factory=dict)
    confidences: List[float] = field(default_factory=list)
    correct: List[bool] = field(default_factory=list)

    @property
    def overall(self) -> Scores:
        every = self.per_label.values()
        return Scores(
            sum(s.tp for s in every), sum(s.predicted for s in every), sum(s.gold for s in every)
        )

    @property
    def ece(self) -> float:
        return expected_calibration_error(self.confidences, self.correct)


class Tuner:
    """Decodes a scored corpus under changing settings; the softmax of each Doc is computed
    once per temperature and nil_veto, and only the thresholds' filter runs per trial."""

    def __init__(self, corpus: ScoredCorpus) -> None:
        self.corpus = corpus
        self._base: Dict[Tuple[float, bool, float], List[Candidates]] = {}

    def outcome(self, decoding: Decoding, *, floor: Optional[float] = None) -> Outcome:
        """Decode every Doc and score the entities against the gold, per label.

        floor (Optional[float]): A threshold at most every label's, under which no candidate
            is kept between calls (nil_veto = false needs one above 0.0); None: the lowest.
        """
        corpus, labels = self.corpus, self.corpus.labels
        cuts = decoding.cuts(labels)
        if floor is None:
            floor = 0.0 if decoding.nil_veto else float(cuts[1:].min())
        key = (decoding.temperature, decoding.nil_veto, floor)
        if key not in self._base:
            self._base[key] = [
                entity_candidates(
                    logits,
                    threshold=floor,
                    temperature=decoding.temperature,
                    nil_veto=decoding.nil_veto,
                )
                for logits in corpus.logits
            ]
        result = Outcome({label: Scores() for label in labels[1:]})
        for spans, base, gold in zip(corpus.spans, self._base[key], corpus.gold):
            found, ids, probs = decode_candidates(spans, base.above(cuts), nested=decoding.nested)
            for _, _, label in gold:
                result.per_label.setdefault(label, Scores()).gold += 1
            # each span at most once: the decodings never repeat one
            for (s, e), i, prob in zip(found.tolist(), ids.tolist(), probs.tolist()):
                hit = (s, e, labels[i]) in gold
                scores = result.per_label[labels[i]]
                scores.predicted += 1
                scores.tp += hit
                result.confidences.append(prob)
                result.correct.append(hit)
        return result


def tune_thresholds(
    tuner: Tuner,
    decoding: Decoding,
    grid: Sequence[float],
    *,
    rounds: int = 3,
) -> Dict[str, float]:
    """Each label's threshold from `grid` that maximizes the label's F1, the others fixed;
    in rounds until none moves. A threshold moves only for a strictly higher F1.

    tuner (Tuner): The scored corpus.
    decoding (Decoding): The starting settings (their thresholds are the starting point).
    grid (Sequence[float]): The thresholds tried.
    rounds (int): At most this many passes over the labels.
    RETURNS (Dict[str, float]): Every entity label's threshold.
    """
    labels = tuner.corpus.labels[1:]
    table = {label: decoding.threshold.get(label, 0.0) for label in labels}
    floor = min([*grid, *table.values()])
    for _ in range(rounds):
        moved = False
        for label in labels:
            best_f = tuner.outcome(_with(decoding, table), floor=floor).per_label[label].f
            best_t = table[label]
            for t in grid:
                if t == table[label]:
                    continue
                f = (
                    tuner.outcome(_with(decoding, {**table, label: t}), floor=floor)
                    .per_label[label]
                    .f
                )
                if f > best_f + 1e-12:
                    best_f, best_t = f, t
            if best_t != table[label]:
                table[label], moved = best_t, True
        if not moved:
            break
    return table


def _with(decoding: Decoding, table: Dict[str, float]) -> Decoding:
    return Decoding(dict(table), decoding.temperature, decoding.nil_veto, decoding.nested)


def fit_temperature(corpus: ScoredCorpus, *, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature that minimizes the mean negative log-likelihood of every candidate
    span's gold label (no-entity for spans that are no gold entity), by golden-section search
    over log T.

    corpus (ScoredCorpus): The scored corpus.
    RETURNS (float): The temperature.
    """
    logits, targets = candidate_targets(corpus)
    if not len(targets):
        return 1.0

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, targets, math.exp(log_t))

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return round(math.exp((a + b) / 2), 4)


def candidate_targets(corpus: ScoredCorpus) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """All candidate spans' logits and their gold label ids (0: no entity), stacked."""
    if not corpus.logits:
        return numpy.zeros((0, len(corpus.labels))), numpy.zeros(0, "i")
    logits = numpy.concatenate([numpy.asarray(x, dtype="float64") for x in corpus.logits])
    return logits, numpy.concatenate(corpus.targets)


def negative_log_likelihood(
    logits: numpy.ndarray, targets: numpy.ndarray, temperature: float
) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    log_probs = log_softmax(logits / temperature)
    return float(-log_probs[numpy.arange(len(targets)), targets].mean())


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float:
    """Expected calibration error: the mean |accuracy - confidence| over equal-width
    confidence bins, weighted by the share of predictions in each bin (0.0 for none).

    confidences (Sequence[float]): Each prediction's score, in [0, 1].
    correct (Sequence[bool]): Whether each prediction is right.
    bins (int): Number of bins.
    RETURNS (float): The error.
    """
    conf = numpy.asarray(confidences, dtype="float64")
    hits = numpy.asarray(correct, dtype="float64")
    if not len(conf):
        return 0.0
    which = numpy.minimum((conf * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(hits[inside].mean() - conf[inside].mean())
    return float(error)


# -- the command ---------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """Add the `tune-thresholds` subcommand to the command line's subparsers."""
    tune = commands.add_parser(
        "tune-thresholds",
        help="tune luke_ner's per-label thresholds (and a temperature) on a dev corpus",
        description=(
            "Score every candidate span of a dev corpus once, pick each label's threshold to "
            "maximize that label's F1 (for doc.ents or the nested group), print the per-label "
            "table before and after, and write the pipeline with the tuned threshold table in "
            "its config to OUT. --temperature first fits one temperature (calibrated scores) "
            "and reports the expected calibration error before and after."
        ),
    )
    tune.add_argument("pipeline", metavar="PIPELINE", help="a pipeline folder or package name")
    tune.add_argument("dev", metavar="DEV.spacy", help="dev corpus (.spacy) with gold entities")
    tune.add_argument("out", metavar="OUT", help="folder for the pipeline with the tuned settings")
    tune.add_argument(
        "--target",
        choices=("ents", "nested"),
        default="ents",
        help="tune doc.ents (default; gold: doc.ents) or the nested group (nested_spans_key; "
        "gold: the reference Docs' group of --gold-key)",
    )
    tune.add_argument(
        "--gold-key",
        default=None,
        help="doc.spans key of the nested gold (default: nested_spans_key)",
    )
    tune.add_argument(
        "--temperature", action="store_true", help="fit one temperature first and report the ECE"
    )
    tune.add_argument(
        "--nil-veto",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tune for nil_veto = true (the recipe) or, with --no-nil-veto, false: spans under "
        "no-entity compete when their entity label passes its threshold (more recall; the "
        "grid then starts above 0); default: the pipeline's own setting",
    )
    tune.add_argument(
        "--step", type=float, default=0.05, help="grid step of the thresholds (default: 0.05)"
    )
    tune.add_argument(
        "--component", default=None, help="the luke_ner component (default: the first)"
    )
    tune.add_argument("--gpu", type=int, default=-1, metavar="ID", help="GPU id; -1 for CPU")
    tune.add_argument("--scores", default=None, metavar="JSON", help="also write the tables here")
    tune.add_argument("--force", action="store_true", help="write into an existing OUT")
    tune.set_defaults(func=run_tune_thresholds)


def run_tune_thresholds(args: argparse.Namespace) -> int:
    """The `tune-thresholds` subcommand."""
    out = Path(args.out)
    check_new_folder(
        out,
        args.force,
        written="the tuned pipeline",
        sources=[("the pipeline itself", Path(args.pipeline))],
    )
    if args.scores:
        _check_scores(args, out)
    if not 0.0 < args.step < 1.0:
        raise CLIError(f"--step must be between 0 and 1, got {args.step}")
    nlp, name = load_component(args.pipeline, args.component, args.gpu)
    ner = nlp.get_pipe(name)
    settings = ner.settings
    nested = args.target == "nested"
    gold_key = args.gold_key or settings.nested_spans_key
    if nested and settings.nested_spans_key is None:
        raise CLIError(
            f"{args.pipeline}: {name} has no nested_spans_key, so there is no nested group to "
            "tune; set it in the pipeline's config, or tune --target ents"
        )
    corpus = score_corpus(nlp, name, args.dev, gold_key if nested else None)
    if not any(corpus.gold):
        where = f"doc.spans[{gold_key!r}]" if nested else "doc.ents"
        raise CLIError(f"{args.dev} has no gold entities in {where}")
    labels = corpus.labels
    before = Decoding.from_settings(settings, labels, nested)
    start = before.threshold
    tuner = Tuner(corpus)
    target = f"doc.spans[{settings.nested_spans_key!r}]" if nested else "doc.ents"
    report: Dict[str, Any] = {
        "pipeline": str(args.pipeline),
        "dev": str(args.dev),
        "target": target,
    }
    report["before"] = _table(f"{target} before", before, tuner.outcome(before))
    nil_veto = settings.nil_veto if args.nil_veto is None else args.nil_veto
    decoding = Decoding(dict(start), settings.temperature, nil_veto, nested)
    if args.temperature:
        decoding.temperature = fit_temperature(corpus)
        logits, targets = candidate_targets(corpus)
        calibration = {
            "temperature_before": before.temperature,
            "temperature": decoding.temperature,
            "nll_before": negative_log_likelihood(logits, targets, before.temperature),
            "nll_after": negative_log_likelihood(logits, targets, decoding.temperature),
            "ece_before": tuner.outcome(before).ece,
            "ece_after": tuner.outcome(
                Decoding(dict(start), decoding.temperature, before.nil_veto, nested)
            ).ece,
        }
        report["calibration"] = calibration
        print(
            f"temperature {before.temperature:g} -> {decoding.temperature:g}: negative "
            f"log-likelihood of the candidates' gold labels {calibration['nll_before']:.4f} -> "
            f"{calibration['nll_after']:.4f}; expected calibration error of the entities' "
            f"scores ({ECE_BINS} bins) {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f}"
        )
    grid = _grid(args.step, positive=not decoding.nil_veto)
    if not decoding.nil_veto:
        decoding.threshold = {label: max(t, grid[0]) for label, t in decoding.threshold.items()}
    table = tune_thresholds(tuner, decoding, grid)
    after = Decoding(table, decoding.temperature, decoding.nil_veto, nested)
    report["after"] = _table(f"{target} after", after, tuner.outcome(after))
    overrides = {"threshold": table, "temperature": after.temperature, "nil_veto": after.nil_veto}
    _save(nlp, name, overrides, out)
    report["settings"] = overrides
    print(
        f"\nwrote {out} with threshold = {table}, temperature = {after.temperature:g}, "
        f"nil_veto = {_bool(after.nil_veto)}"
    )
    if args.scores:
        import srsly

        srsly.write_json(args.scores, report)
    return 0


def score_corpus(
    nlp: Any, name: str, path: str, gold_key: Optional[str], batch_size: int = 16
) -> ScoredCorpus:
    """Score every candidate span of the Docs of a .spacy file (gold words and sentences),
    with their gold: `doc.ents`, or `doc.spans[gold_key]`."""
    from spacy.tokens import DocBin
    from spacy.training import Example

    from .conll import unannotated
    from .training import gold_entities, gold_spans, span_targets

    try:
        refs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    except (OSError, ValueError) as err:
        raise CLIError(f"cannot read {path}: {err}") from err
    ner = nlp.get_pipe(name)
    docs = [unannotated(ref) for ref in refs]
    spans, logits = [], []
    for start in range(0, len(docs), batch_size):
        for scores in ner.span_scores(docs[start : start + batch_size]):
            spans.append(scores.spans)
            logits.append(scores.logits)
    gold = [{(e.start, e.end, e.label_) for e in gold_spans(ref, gold_key)} for ref in refs]
    labels = ["NIL", *ner.labels]
    label_ids = {label: i for i, label in enumerate(labels)}
    # the training targets, so that the fitted temperature is that of the trained loss
    targets = [
        span_targets(
            [doc_spans.tolist()],
            [gold_entities(Example(doc, ref), gold_key).entities],
            label_ids,
            len(doc_spans),
        )[0]
        for doc, ref, doc_spans in zip(docs, refs, spans)
    ]
    return ScoredCorpus(spans, logits, gold, labels, targets)


def _grid(step: float, *, positive: bool) -> List[float]:
    """Every multiple of `step` below 1.0 (without 0.0 when `positive`)."""
    values = [round(i * step, 6) for i in range(math.ceil(1.0 / step - 1e-9))]
    return values[1:] if positive else values


def _table(title: str, decoding: Decoding, outcome: Outcome) -> Dict[str, Any]:
    """Print the per-label table and return it as a dict."""
    print(f"\n{title} (temperature {decoding.temperature:g}, nil_veto {_bool(decoding.nil_veto)})")
    print(f"{'label':<14}{'threshold':>10}{'P':>8}{'R':>8}{'F':>8}{'gold':>7}")
    rows: Dict[str, Any] = {}
    for label, scores in sorted(outcome.per_label.items()):
        t = decoding.threshold.get(label, 0.0)
        print(
            f"{label:<14}{t:>10.2f}{scores.p:>8.4f}{scores.r:>8.4f}{scores.f:>8.4f}{scores.gold:>7}"
        )
        rows[label] = {"threshold": t, **scores.to_dict()}
    total = outcome.overall
    print(f"{ALL:<14}{'':>10}{total.p:>8.4f}{total.r:>8.4f}{total.f:>8.4f}{total.gold:>7}")
    rows[ALL] = total.to_dict()
    return {
        "temperature": decoding.temperature,
        "nil_veto": decoding.nil_veto,
        "per_label": rows,
        "ece": outcome.ece,
    }


def _check_scores(args: argparse.Namespace, out: Path) -> None:
    """Refuse a --scores file that would replace the dev corpus or a file of PIPELINE or OUT,
    an existing file without --force, or one whose folder is missing: it is written last,
    after OUT."""
    scores = Path(args.scores)
    if same_file(scores, Path(args.dev)):
        raise CLIError(f"--scores {scores} is the dev corpus: give --scores another path")
    for what, folder in (("PIPELINE", Path(args.pipeline)), ("OUT", out)):
        if Path(os.path.realpath(scores)).is_relative_to(os.path.realpath(folder)):
            raise CLIError(f"--scores {scores} is inside {what} ({folder}): give another path")
    if scores.is_dir():
        raise CLIError(f"--scores {scores} is a folder: give a file path")
    if scores.exists() and not args.force:
        raise CLIError(f"--scores {scores} already exists: give a new path, or --force")
    if not scores.parent.is_dir():
        raise CLIError(f"--scores {scores}: there is no folder {scores.parent}")


def load_component(pipeline: str, component: Optional[str], gpu: int) -> Tuple[Any, str]:
    """Load a pipeline and name its luke_ner component to tune or score.

    pipeline (str): The pipeline's folder or package.
    component (Optional[str]): The component's name; None for the first luke_ner.
    gpu (int): GPU id, -1 for the CPU.
    RETURNS (Tuple[Language, str]): The pipeline and the component's name.
    RAISES (CLIError): The pipeline cannot be loaded or has no such component.
    """
    import spacy

    from .loading import luke_ner_names

    if gpu >= 0:
        spacy.require_gpu(gpu)
    try:
        nlp = spacy.load(pipeline)
    except (OSError, ValueError) as err:
        raise CLIError(f"cannot load {pipeline}: {err}") from err
    names = luke_ner_names(nlp)
    if component is not None:
        if component not in names:
            raise CLIError(f"{pipeline} has no luke_ner component {component!r} (it has {names})")
        return nlp, component
    if not names:
        raise CLIError(f"{pipeline} has no luke_ner component")
    return nlp, names[0]


def _save(nlp: Any, name: str, overrides: Dict[str, Any], out: Path) -> None:
    """Save the pipeline to `out` with the tuned settings: the component takes them (so its
    own cfg agrees), and they are written into the saved config.cfg, which `spacy.load` reads
    them from."""
    from spacy.util import load_config

    ner = nlp.get_pipe(name)
    ner.cfg = {**ner.cfg, **overrides}  # validated as at construction
    nlp.to_disk(out)
    path = out / "config.cfg"
    config = load_config(path, interpolate=False)
    config["components"][name].update(overrides)
    config.to_disk(path)


def _bool(value: bool) -> str:
    return "true" if value else "false"
