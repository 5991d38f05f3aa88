"""The `luke-spacy` command line: annotate text with luke_ner, build stand-in checkpoints,
export to ONNX.

    luke-spacy annotate "Peter lives in Paris ." "EU rejects German call ."
    luke-spacy annotate --input news.txt --input tweets.jsonl --output ents.jsonl
    cat news.txt | luke-spacy annotate --model /path/to/folder
    luke-spacy random-model /tmp/tiny-luke
    luke-spacy export-onnx /tmp/tiny-luke /tmp/tiny-luke-onnx --quantize int8

Every good record is written, in input order. A bad record (invalid JSON, not an object, no
string text, a line that is not UTF-8, or a text that makes the pipeline raise) is reported on
stderr as FILE:LINE and, by --on-error, skipped (default), written as an error record, or ends
the run after everything before it is written. Lone surrogates (JSON escapes such as "\\ud800",
undecodable bytes in arguments) are replaced with U+FFFD, with a warning.

Exit codes: 0 every record annotated; 1 some records failed (the others were written); 2
nothing could start (bad arguments, an unreadable input, no GPU, a model or pipeline that
cannot be loaded) or the output cannot be written (e.g. a full disk); 130 interrupted (Ctrl-C);
141 the reader of stdout went away (`| head`). One message per problem, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

# Light imports only: torch, spaCy and transformers are imported inside the commands, so that
# --help is quick and Ctrl-C during start-up exits cleanly.
from . import __version__
from .errors import PROG, CLIError, say
from .outputs import check_new_folder, same_file
from .reading import Item, Source, check_readable, count_lines, read_args, read_sources

STDIN = "-"
ON_ERROR = ("skip", "record", "stop")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer killed by SIGPIPE


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code.

    argv (Optional[List[str]]): Arguments without the program name; sys.argv[1:] when None.
    RETURNS (int): 0 on success, 1 when some records failed, 2 when nothing could start or
        the output cannot be written, 130 on Ctrl-C, 141 when stdout was closed.
    """
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help, --version, usage errors
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        return args.func(args)
    except CLIError as err:
        say(f"error: {err}")
        return err.code
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the `annotate`, `random-model`, `export-onnx` and
    `tune-thresholds` subcommands."""
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
        help="hub id or local checkpoint folder (default: the component's, LUKE-large CoNLL-2003)",
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
        default=None,
        metavar="{document,sentence}",
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
        "--on-error",
        choices=ON_ERROR,
        default=None,
        help="a bad record is reported on stderr and skipped, written as an error record "
        '({"text", "error", "source", "meta"}), or stops the run after the records before it '
        "(default: skip; --engine ray always writes error rows, as record); the exit code is 1 "
        "in every case",
    )
    annotate.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr for --input files"
    )
    annotate.add_argument(
        "--html", metavar="FILE", help="also write a page of the entities with label and score"
    )
    # --- ray engine (luke_spacy/cli_ray.py) ---
    from .cli_ray import add_arguments as add_ray_arguments

    add_ray_arguments(annotate)
    # --- end ray engine ---
    annotate.set_defaults(func=run_annotate)

    random_model = commands.add_parser(
        "random-model",
        help="write a random-weight stand-in checkpoint folder",
        description=(
            "Write a LukeForEntitySpanClassification checkpoint with random weights (for tests, "
            "smoke runs and speed benchmarks) and print its folder."
        ),
    )
    random_model.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    random_model.add_argument(
        "--force",
        action="store_true",
        help="write into OUT even when it holds files (they may be overwritten)",
    )
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

    export = commands.add_parser(
        "export-onnx",
        help="export a checkpoint or pipeline to ONNX for backend = 'onnxruntime'",
        description=(
            "Write the encoder and span head of a checkpoint (hub id or folder), or of a saved "
            "pipeline's luke_ner, as an ONNX export folder (graph, manifest, config and "
            "tokenizer) for backend = 'onnxruntime': float32 reproduces the torch backend's "
            "logits; --quantize int8 quantizes the linear layers (ONNX Runtime dynamic "
            "quantization; faster on CPU, results can differ: measure them with spacy "
            "evaluate). Use it with onnx_path = OUT. Needs luke-spacy[onnx]."
        ),
    )
    export.add_argument("source", metavar="PIPELINE_OR_CHECKPOINT")
    export.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    export.add_argument("--quantize", choices=("int8",), default=None, help="int8 weights")
    export.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="int8: one weight scale per output channel (default: yes)",
    )
    export.add_argument("--revision", default="main", help="hub revision (default: main)")
    export.add_argument("--component", default=None, help="luke_ner component of a pipeline")
    export.add_argument(
        "--force",
        action="store_true",
        help="write into OUT even when it holds files (the export's files are replaced)",
    )
    export.set_defaults(func=run_export_onnx)

    # --- tune-thresholds (luke_spacy/tuning.py) ---
    from .tuning import add_parser as add_tuning_parser

    add_tuning_parser(commands)
    return parser


# annotate


def run_annotate(args: argparse.Namespace) -> int:
    """The `annotate` subcommand."""
    # --- ray engine ---
    if args.engine == "ray":
        from .cli_ray import run_ray

        return run_ray(args)
    # --- end ray engine ---
    sources, texts = _sources(args)
    for source in sources:
        check_readable(source)
    _refuse_overwriting(sources, args.output, args.html)
    # A progress bar for files only, with a total when every input is a regular file.
    files = [source.path for source in sources if source.path is not None]
    show_progress = bool(files) and not args.no_progress
    total = None
    if show_progress and len(files) == len(sources) and all(path.is_file() for path in files):
        total = sum(count_lines(path) for path in files)
    nlp, spans_keys = _load(args)
    items = read_args(texts) if texts is not None else read_sources(sources, args.text_field)
    output = Output(args.output)
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=total, unit="text", file=sys.stderr, dynamic_ncols=True)
    try:
        with ExitStack() as stack:
            html = _open_html(stack, args.html) if args.html else None
            return _annotate(nlp, spans_keys, items, output, args, progress, html)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        output.close()
        if progress is not None:
            progress.close()


def _refuse_overwriting(sources: List[Source], output: str, html: Optional[str]) -> None:
    """Refuse an --output or --html that names an input or the other written file, before
    anything is opened for writing: opening it would empty it. Also when the paths differ but
    name one file (./name, a symbolic or hard link)."""
    read = [("--input", source.name) for source in sources if source.path is not None]
    written = [
        (option, name)
        for option, name in (("--output", output), ("--html", html))
        if name is not None and name != STDIN
    ]
    for i, (option, name) in enumerate(written):
        for other_option, other in read + written[:i]:
            if not same_file(Path(name), Path(other)):
                continue
            if other_option == "--input":
                why = "it would be emptied before it is read"
            else:
                why = "each needs a file of its own"
            raise CLIError(
                f"{option} {name} is the same file as {other_option} {other}: {why}; "
                f"give {option} another path"
            )


def _open_html(stack: ExitStack, path: str) -> Any:
    """The `--html` page, opened before any work so that an unwritable path fails first."""
    from .display import HtmlWriter

    try:
        return stack.enter_context(HtmlWriter(path))
    except OSError as err:
        raise CLIError(f"cannot write --html {path}: {err.strerror or err}") from err


def _load(args: argparse.Namespace) -> Tuple[Any, List[str]]:
    """The pipeline and its spans keys, or a CLIError that says what to fix."""
    from .loading import load_pipeline

    overrides = {"context": args.context} if args.context is not None else {}
    try:
        return load_pipeline(
            model=args.model,
            pipeline=args.pipeline,
            lang=args.lang,
            gpu=args.gpu,
            overrides=overrides,
            sentencizer=args.sentencizer,
        )
    except (OSError, ValueError) as err:  # CheckpointError included
        raise CLIError(str(err)) from err


def _annotate(
    nlp: Any,
    spans_keys: List[str],
    items: Iterable[Item],
    output: Output,
    args: argparse.Namespace,
    progress: Any,
    html: Optional[Any] = None,
) -> int:
    """Annotate and write every item in order; report and handle bad ones per --on-error.
    The `--html` page, when there is one, shows the records written to the output."""
    from .records import doc_to_record, error_record, pipeline_error

    on_error = args.on_error or "skip"
    n_items = n_failed = 0
    for item, result in _pipe(nlp, items, args.batch_size):
        n_items += 1
        if item.warning is not None:
            say(f"warning: {item.source}: {item.warning}", progress)
        error = item.error
        if isinstance(result, Exception):
            error = pipeline_error(result)
        if error is None:
            record = doc_to_record(result, spans_keys, item.meta)
            output.write(record)
            if html is not None:
                html.add(record)
        else:
            n_failed += 1
            say(f"error: {item.source}: {error}", progress)
            if on_error == "record":
                record = error_record(error, item.source, text=item.text, meta=item.meta)
                output.write(record)
                if html is not None:
                    html.add(record)
            elif on_error == "stop":
                output.flush()
                say("stopped at the first bad record (--on-error stop)", progress)
                return EXIT_FAILED
        if progress is not None:
            progress.update(1)
    output.flush()
    if n_failed:
        done = {"skip": "skipped", "record": "written as error records"}[on_error]
        say(f"{n_failed} of {n_items} records failed ({done})", progress)
        return EXIT_FAILED
    return 0


def _pipe(nlp: Any, items: Iterable[Item], batch_size: int) -> Iterator[Tuple[Item, Any]]:
    """Each item with its Doc, the exception the pipeline raised on it, or None for items
    that were bad before the pipeline; in input order."""
    from .records import run_isolated

    items = iter(items)
    while True:
        chunk = list(islice(items, batch_size))
        if not chunk:
            return
        texts = [item.text for item in chunk if item.error is None]
        results = iter(run_isolated(nlp, texts))
        for item in chunk:
            yield item, (next(results) if item.error is None else None)


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


class Output:
    """The output JSONL stream, UTF-8 whatever the locale; write errors become CLIErrors
    (except a closed pipe, which the caller handles)."""

    def __init__(self, name: str) -> None:
        self.name = "stdout" if name == STDIN else name
        self.file: Optional[IO[bytes]] = None
        if name == STDIN:
            self.stream: Union[IO[bytes], IO[str]] = getattr(sys.stdout, "buffer", sys.stdout)
            self.binary = self.stream is not sys.stdout
            return
        try:
            self.file = self.stream = open(name, "wb")
            self.binary = True
        except OSError as err:
            raise CLIError(f"cannot write --output {name}: {err.strerror or err}") from err

    def write(self, record: Dict[str, Any]) -> None:
        from .records import json_line

        line = json_line(record) + "\n"
        self._do(lambda: self.stream.write(line.encode("utf-8") if self.binary else line))

    def flush(self) -> None:
        self._do(self.stream.flush)

    def _do(self, action) -> None:
        try:
            action()
        except BrokenPipeError:
            raise
        except OSError as err:
            if self.file is None:
                _silence_stdout()
            raise CLIError(f"cannot write {self.name}: {err.strerror or err}") from err

    def close(self) -> None:
        """Flush what is left, quietly: write errors were already reported."""
        try:
            if self.file is not None:
                self.file.close()
            else:
                self.stream.flush()
        except (OSError, ValueError):
            pass


def _silence_stdout() -> None:
    """After a closed pipe (`| head`) or a failed write, point stdout at devnull so that the
    interpreter's final flush does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


# random-model


def run_random_model(args: argparse.Namespace) -> int:
    """The `random-model` subcommand: write the folder and print it."""
    from .random_model import build_random_checkpoint, missing_requirement

    # Empty values (e.g. blank spaCy project variables) mean "not given".
    args.config, args.bpe_dir = args.config or None, args.bpe_dir or None
    if missing_requirement(args.kind) is not None:
        raise CLIError(missing_requirement(args.kind))
    # random weights written next to a real checkpoint's (e.g. a model.safetensors that
    # transformers prefers to its pytorch_model.bin) would silently replace its predictions
    check_new_folder(Path(args.out), args.force, written="the random checkpoint")
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
    try:
        path = build_random_checkpoint(
            args.out,
            kind=args.kind,
            config=config,
            bpe_dir=args.bpe_dir,
            labels=labels,
            seed=args.seed,
            classifier_std=args.classifier_std,
        )
    except OSError as err:
        raise CLIError(f"cannot write {args.out}: {err.strerror or err}") from err
    print(path)
    return 0


# export-onnx


def run_export_onnx(args: argparse.Namespace) -> int:
    """The `export-onnx` subcommand: write the export folder and print it."""
    import time

    from .onnx_export import export_onnx

    start = time.perf_counter()
    try:
        manifest = export_onnx(
            args.source,
            args.out,
            quantize=args.quantize,
            per_channel=args.per_channel,
            revision=args.revision,
            component=args.component,
            force=args.force,
        )
    except (ImportError, ValueError) as err:  # CheckpointError included
        raise CLIError(str(err)) from err
    except OSError as err:
        raise CLIError(f"cannot write {args.out}: {err.strerror or err}") from err
    size = sum(info["bytes"] for info in manifest["files"].values())
    say(
        f"{manifest['precision']} export of {manifest['source'].get('name')} "
        f"({size / 1e6:.0f} MB) written in {time.perf_counter() - start:.0f} s; use it with "
        f"config={{'backend': 'onnxruntime', 'onnx_path': '{args.out}'}}"
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
