"""The `luke-spacy` command line: annotate text with luke_ner, build stand-in checkpoints.

    luke-spacy annotate "Peter lives in Paris ." "EU rejects German call ."
    luke-spacy annotate --input news.txt --input tweets.jsonl --output ents.jsonl
    cat news.txt | luke-spacy annotate --model /path/to/folder
    luke-spacy random-model /tmp/tiny-luke

Exit codes: 0 done; 1 an input record was invalid (bad JSON, no text field) after processing
had started; 2 nothing was processed: bad arguments, a missing input file, no GPU, or a model
or pipeline that cannot be loaded (one message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from huggingface_hub.utils import logging as hf_logging

from . import __version__
from .display import HtmlWriter, scored_entities
from .model import CheckpointError
from .pipe import CONTEXTS, DEFAULT_CONFIG, LukeEntityRecognizer

PROG = "luke-spacy"
DEFAULT_MODEL = DEFAULT_CONFIG["luke_ner"]["model"]["name"]
STDIN = "-"
# Pipe metadata that means a component sets sentence boundaries.
SENTENCE_ASSIGNS = ("token.is_sent_start", "doc.sents")

Record = Tuple[str, Optional[Dict[str, Any]]]


class CLIError(Exception):
    """An error reported as one message on stderr, with an exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Source:
    """An input stream: a file, or stdin when `path` is None."""

    path: Optional[Path]
    jsonl: bool

    @property
    def name(self) -> str:
        return "<stdin>" if self.path is None else str(self.path)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code.

    argv (Optional[List[str]]): Arguments without the program name; sys.argv[1:] when None.
    RETURNS (int): 0 on success, 1 for an invalid input record, 2 when nothing could start.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the `annotate` and `random-model` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="LUKE named entity recognition as a spaCy component."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    annotate = commands.add_parser(
        "annotate",
        help="find named entities; one JSON line per input text",
        description=(
            "Find named entities and write one JSON line per input text: "
            '{"text": ..., "entities": [{"text", "label", "start", "end", "score"}, ...]} '
            "(start/end are character offsets into text). Texts come from the arguments (one "
            "text each), from --input files, or from stdin (no arguments, or '-'). Text files "
            "and stdin hold one text per non-empty line. JSONL files (*.jsonl, or --jsonl) hold "
            "one object per line; the --text-field is the text and the other fields are "
            'copied to "meta".'
        ),
    )
    annotate.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' reads stdin")
    annotate.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="FILE",
        help="text or JSONL file, repeatable; '-' is stdin",
    )
    annotate.add_argument(
        "--jsonl", action="store_true", help="read every input (stdin included) as JSONL"
    )
    annotate.add_argument(
        "--text-field", default="text", help="field of the text in JSONL records (default: text)"
    )
    annotate.add_argument(
        "-o", "--output", default=STDIN, metavar="FILE", help="output JSONL file (default: stdout)"
    )
    model = annotate.add_mutually_exclusive_group()
    model.add_argument(
        "-m",
        "--model",
        default=None,
        help=f"hub id or local checkpoint folder (default: {DEFAULT_MODEL})",
    )
    model.add_argument(
        "--pipeline", default=None, metavar="DIR", help="load a saved spaCy pipeline instead"
    )
    annotate.add_argument(
        "--lang", default="en", help="language of the blank pipeline's tokenizer (default: en)"
    )
    annotate.add_argument(
        "--gpu", type=int, default=-1, metavar="ID", help="GPU id; -1 for CPU (default: -1)"
    )
    annotate.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="texts buffered per nlp.pipe batch (default: 64)",
    )
    annotate.add_argument(
        "--context",
        choices=CONTEXTS,
        default=None,
        help="document context around each sentence, or none (default: the component's, document)",
    )
    annotate.add_argument(
        "--sentencizer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add spaCy's rule-based sentencizer before luke_ner (default: yes; with --pipeline, "
        "only when no earlier component sets sentence boundaries)",
    )
    annotate.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr for --input files"
    )
    annotate.add_argument(
        "--html", metavar="FILE", help="also write a page of the entities with label and score"
    )
    annotate.set_defaults(func=run_annotate)

    random_model = commands.add_parser(
        "random-model",
        help="write a random-weight stand-in checkpoint folder",
        description=(
            "Write a LukeForEntitySpanClassification checkpoint with random weights (for tests, "
            "smoke runs and speed benchmarks) and print its folder."
        ),
    )
    random_model.add_argument("out", metavar="OUT", help="output folder")
    random_model.add_argument(
        "--size",
        choices=("tiny", "full"),
        default=None,
        help="tiny sizes, or the sizes of --config (default: full with --config, else tiny)",
    )
    random_model.add_argument(
        "--config",
        default=None,
        metavar="CONFIG_JSON",
        help="a real config.json (e.g. luke-large's); required for --size full",
    )
    random_model.add_argument(
        "--bpe-dir", default=None, metavar="DIR", help="folder with RoBERTa vocab.json/merges.txt"
    )
    random_model.add_argument("--kind", choices=("luke", "mluke"), default="luke")
    random_model.add_argument("--seed", type=int, default=0, help="torch seed (default: 0)")
    random_model.add_argument(
        "--classifier-std",
        type=float,
        default=None,
        metavar="STD",
        help="std of the classifier weights, to widen logit margins",
    )
    random_model.set_defaults(func=run_random_model)
    return parser


# annotate


def run_annotate(args: argparse.Namespace) -> int:
    """The `annotate` subcommand."""
    sources, texts = _sources(args)
    for source in sources:
        if source.path is not None and not source.path.is_file():
            raise CLIError(f"cannot read --input {source.name}: no such file")
    # A progress bar for files only, with a total when no input is stdin.
    files = [source.path for source in sources if source.path is not None]
    show_progress = bool(files) and not args.no_progress
    total = None
    if show_progress and len(files) == len(sources):
        total = sum(_count_lines(path) for path in files)
    nlp, spans_keys = load_pipeline(args)
    records = _read_texts(texts) if texts is not None else _read_sources(sources, args.text_field)
    with ExitStack() as stack:
        out = _open_output(args.output, stack)
        progress = None
        if show_progress:
            from tqdm import tqdm

            progress = stack.enter_context(
                tqdm(total=total, unit="text", file=sys.stderr, dynamic_ncols=True)
            )
        try:
            html = stack.enter_context(HtmlWriter(args.html)) if args.html else None
            for doc, meta in nlp.pipe(records, as_tuples=True, batch_size=args.batch_size):
                record = doc_to_record(doc, spans_keys, meta)
                out.write(json.dumps(record, ensure_ascii=False))
                out.write("\n")
                if html is not None:
                    html.add(record)
                if progress is not None:
                    progress.update(1)
            out.flush()
        except BrokenPipeError:
            _silence_stdout()
            return 1
    return 0


def load_pipeline(args: argparse.Namespace) -> Tuple[Any, List[str]]:
    """Build or load the pipeline and load its checkpoints, so load errors come first.

    RETURNS (Tuple[Language, List[str]]): The pipeline and the spans keys of its luke_ner
        components.
    """
    import spacy

    device = _gpu_device(args.gpu) if args.gpu >= 0 else None
    # The hub client logs every retry of an unreachable network; the one error below says
    # what failed and how to fix it.
    hf_logging.set_verbosity_error()
    try:
        if args.pipeline is not None:
            nlp = spacy.load(args.pipeline)
        else:
            nlp = spacy.blank(args.lang)
            config: Dict[str, Any] = {"model": {"name": _model_name(args.model)}}
            if args.context is not None:
                config["context"] = args.context
            if device is not None:
                config["device"] = device
            nlp.add_pipe("luke_ner", config=config)
        names = [name for name, proc in nlp.pipeline if isinstance(proc, LukeEntityRecognizer)]
        if not names:
            raise CLIError(f"the pipeline {args.pipeline} has no luke_ner component")
        for name in names:
            component = nlp.get_pipe(name)
            if args.pipeline is not None and args.context is not None:
                component.cfg["context"] = args.context
            if device is not None:
                component.cfg["device"] = device
            component.initialize(nlp=nlp)
    except CheckpointError as err:
        hint = "" if args.pipeline is not None else " On the command line: --model /path/to/folder."
        raise CLIError(f"{err}{hint}") from err
    except (OSError, ValueError) as err:
        what = f"pipeline {args.pipeline}" if args.pipeline is not None else "model"
        raise CLIError(f"cannot load the {what}: {_one_line(err)}") from err
    sentencizer = args.sentencizer
    if sentencizer is None:
        sentencizer = args.pipeline is None or not _sets_sentences(nlp, names[0])
    if sentencizer and "sentencizer" not in nlp.pipe_names:
        nlp.add_pipe("sentencizer", before=names[0])
    spans_keys = [nlp.get_pipe(name).cfg["spans_key"] for name in names]
    return nlp, [key for key in spans_keys if key is not None]


def _gpu_device(gpu_id: int) -> Optional[str]:
    """Select the GPU: `spacy.require_gpu(gpu_id)`; without CuPy, the torch device to give
    luke_ner (the component runs in torch, so CuPy is optional)."""
    import spacy

    try:
        spacy.require_gpu(gpu_id)
        return None
    except (ValueError, RuntimeError, ImportError) as err:
        import torch

        if torch.cuda.is_available() and gpu_id < torch.cuda.device_count():
            return f"cuda:{gpu_id}"
        raise CLIError(f"cannot use GPU {gpu_id}: {_one_line(err)}") from err


def doc_to_record(
    doc: Any, spans_keys: Sequence[str], meta: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """The output record of a Doc: text, `doc.ents` with character offsets and scores
    (`display.scored_entities`: None for entities that luke_ner did not set)."""
    record: Dict[str, Any] = {"text": doc.text, "entities": scored_entities(doc, spans_keys)}
    if meta:
        record["meta"] = meta
    return record


def _sources(args: argparse.Namespace) -> Tuple[List[Source], Optional[List[str]]]:
    """The input files, or the argument texts (None when reading files or stdin)."""
    if args.texts and args.input:
        raise CLIError("give texts as arguments or --input files, not both")
    if args.input:
        names = args.input
    elif not args.texts or args.texts == [STDIN]:
        names = [STDIN]
    else:
        if STDIN in args.texts:
            raise CLIError("'-' (stdin) cannot be mixed with texts given as arguments")
        return [], list(args.texts)
    sources = []
    for name in names:
        path = None if name == STDIN else Path(name)
        jsonl = args.jsonl or (path is not None and path.suffix.lower() == ".jsonl")
        sources.append(Source(path, jsonl))
    return sources, None


def _read_texts(texts: Sequence[str]) -> Iterator[Record]:
    for text in texts:
        yield text, None


def _read_sources(sources: Sequence[Source], text_field: str) -> Iterator[Record]:
    """Stream (text, meta) from each source in order, one line at a time."""
    for source in sources:
        if source.path is None:
            yield from _read_lines(source, sys.stdin, text_field)
        else:
            with source.path.open(encoding="utf-8") as lines:
                yield from _read_lines(source, lines, text_field)


def _read_lines(source: Source, lines: IO[str], text_field: str) -> Iterator[Record]:
    """Text: one text per non-empty line (line break removed, other whitespace kept).
    JSONL: one object per non-empty line; the other fields become the meta."""
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if not source.jsonl:
            yield line, None
            continue
        where = f"{source.name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CLIError(f"{where}: invalid JSON ({err})", code=1) from err
        if not isinstance(record, dict):
            raise CLIError(f"{where}: expected a JSON object, got {type(record).__name__}", 1)
        if text_field not in record:
            raise CLIError(f"{where}: no {text_field!r} field (set --text-field)", code=1)
        text = record.pop(text_field)
        if not isinstance(text, str):
            raise CLIError(f"{where}: {text_field!r} is {type(text).__name__}, not a string", 1)
        yield text, record


def _count_lines(path: Path) -> int:
    """The number of non-empty lines of a file, for the progress bar's total."""
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def _open_output(name: str, stack: ExitStack) -> IO[str]:
    if name == STDIN:
        return sys.stdout
    try:
        return stack.enter_context(open(name, "w", encoding="utf-8"))
    except OSError as err:
        raise CLIError(f"cannot write --output {name}: {err.strerror or err}") from err


def _model_name(name: Optional[str]) -> str:
    """The --model value; a path-like one that is no folder fails before any loading."""
    if name is None:
        return DEFAULT_MODEL
    name = os.path.expanduser(name)
    path_like = os.path.isabs(name) or name.startswith(".") or name.count("/") > 1
    if path_like and not os.path.isdir(name):
        raise CLIError(
            f"--model {name} is not a folder. Pass --model /path/to/folder, a local folder "
            "with config.json, the weights and the tokenizer files (or a hub id)."
        )
    return name


def _sets_sentences(nlp: Any, before: str) -> bool:
    """Whether a component before `before` sets sentence boundaries."""
    for name in nlp.pipe_names:
        if name == before:
            return False
        assigns = nlp.get_pipe_meta(name).assigns
        if any(attr in assigns for attr in SENTENCE_ASSIGNS):
            return True
    return False


def _silence_stdout() -> None:
    """After a closed pipe (`| head`), point stdout at devnull so exit does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


# random-model


def run_random_model(args: argparse.Namespace) -> int:
    """The `random-model` subcommand: write the folder and print it."""
    from .random_model import build_random_checkpoint

    # Empty values (e.g. blank spaCy project variables) mean "not given".
    args.config, args.bpe_dir = args.config or None, args.bpe_dir or None
    size = args.size or ("full" if args.config else "tiny")
    if size == "full" and not args.config:
        raise CLIError("--size full needs --config CONFIG_JSON (the real model's config.json)")
    if size == "tiny" and args.config:
        raise CLIError("--config sets the sizes of --size full; drop it or use --size full")
    if args.bpe_dir is not None and args.kind != "luke":
        raise CLIError("--bpe-dir is for --kind luke (mLUKE uses SentencePiece)")
    if args.bpe_dir is not None:
        for name in ("vocab.json", "merges.txt"):
            if not (Path(args.bpe_dir) / name).is_file():
                raise CLIError(f"--bpe-dir {args.bpe_dir} has no {name}")
    config = None
    labels = None
    if size == "full":
        try:
            config = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CLIError(f"cannot read --config {args.config}: {err}") from err
        if not isinstance(config, dict):
            raise CLIError(f"--config {args.config} is not a JSON object")
        id2label = config.get("id2label")
        if isinstance(id2label, dict) and len(id2label) >= 2:
            try:
                labels = [id2label[key] for key in sorted(id2label, key=int)]
            except ValueError as err:
                raise CLIError(f"--config {args.config}: id2label keys must be ids") from err
    path = build_random_checkpoint(
        args.out,
        kind=args.kind,
        config=config,
        bpe_dir=args.bpe_dir,
        labels=labels,
        seed=args.seed,
        classifier_std=args.classifier_std,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
