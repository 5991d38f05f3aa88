"""`luke-spacy annotate --engine ray`: the command line of `luke_spacy.distributed`.

    luke-spacy annotate --engine ray -i 'corpus/*.jsonl' --output ents/ --model /path/to/ckpt \
        --actors 1:8 --gpus-per-actor 1
    luke-spacy annotate --engine ray -i s3://bucket/corpus/ --output s3://bucket/ents/ \
        --pipeline my_pipeline --ray-address auto --resume

Every job writes a Ray Data checkpoint beside its output (`--checkpoint`); `--resume` finishes
a failed or killed job from it, and the output then holds every input id once. Prints a
summary (rows in, rows out, error rows) on stderr; exits 1 when any row failed or is missing,
2 when the job cannot start (as the local engine).
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
from typing import TYPE_CHECKING, List, Tuple

if TYPE_CHECKING:
    from .distributed import OutputSummary

from .errors import CheckpointError, CLIError, error_line, say

ENGINES = ("local", "ray")
FORMATS = ("parquet", "jsonl")
CHECKPOINT_SUFFIX = ".checkpoint"


def add_arguments(annotate: argparse.ArgumentParser) -> None:
    """The `--engine` option and the options of the ray engine."""
    annotate.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process (default); ray: Ray Data actors on a local or existing cluster",
    )
    ray = annotate.add_argument_group("ray engine (--engine ray)")
    ray.add_argument(
        "--id-field",
        default=None,
        help="field or column of the record id, compared as a string (default: FILE:LINE of "
        "the input, FILE its absolute path)",
    )
    ray.add_argument(
        "--output-format", choices=FORMATS, default="parquet", help="(default: parquet)"
    )
    ray.add_argument(
        "--actors", type=_actors, default=(1, 1), metavar="MIN:MAX", help="(default: 1:1)"
    )
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="N", help="(default: 0)")
    ray.add_argument(
        "--cpus-per-actor", type=float, default=None, metavar="N", help="(default: Ray's, 1)"
    )
    ray.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="finish the failed or killed job that wrote --output, from its checkpoint "
        "(DIR, if given, is the --output folder)",
    )
    ray.add_argument(
        "--checkpoint",
        default=None,
        metavar="DIR",
        help="the job's checkpoint folder, on storage every node reaches, outside --output; "
        f"removed when the job is done (default: the output folder's name + {CHECKPOINT_SUFFIX})",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="an existing cluster ('auto', ray://...); default: start a local one",
    )


def run_ray(args: argparse.Namespace) -> int:
    """Annotate --input files on Ray; the CLIError of `cli` for bad arguments."""
    try:
        import ray

        from . import distributed
    except ImportError as err:
        raise CLIError(f"--engine ray needs Ray: pip install 'luke-spacy[ray]' ({err})") from err
    from .loading import check_model

    if args.texts:
        raise CLIError("--engine ray reads --input files, not texts given as arguments")
    if not args.input or args.output in (None, "-"):
        raise CLIError("--engine ray needs --input FILE (JSONL or Parquet) and --output DIR")
    if args.gpu != -1:
        raise CLIError("--engine ray: use --gpus-per-actor; Ray assigns the GPUs")
    if args.on_error not in (None, "record"):
        raise CLIError(
            f"--on-error {args.on_error} is for the local engine: the Ray engine writes every "
            "bad record as an error row (as --on-error record) and never stops a job for one"
        )
    if args.html:
        raise CLIError(
            "--html is for the local engine (one page for every text): the Ray engine writes "
            "only --output; draw a sample with the local engine"
        )
    paths = input_paths(args.input)
    if args.model is not None and args.pipeline is None:
        try:
            check_model(args.model)
        except CheckpointError as err:
            raise CLIError(str(err)) from err
    output = _absolute(args.output)
    checkpoint = _absolute(args.checkpoint or output.rstrip("/") + CHECKPOINT_SUFFIX)
    resume = args.resume is not None
    if isinstance(args.resume, str) and _absolute(args.resume).rstrip("/") != output.rstrip("/"):
        raise CLIError(
            f"--resume {args.resume}: a job is resumed into its own --output ({args.output}); "
            "give --resume alone"
        )
    prepare_output(output, checkpoint, resume)
    low, high = args.actors
    started = not ray.is_initialized()
    if started:
        # A local cluster needs logical CPUs beyond the actors' for the read and write stages
        # and the checkpoint filter, else a pool that takes every core starves them and the
        # job never ends.
        cpus = None
        if args.ray_address is None:
            cpus = max(os.cpu_count() or 1, int(high * (args.cpus_per_actor or 1)) + 3)
        ray.init(address=args.ray_address, num_cpus=cpus, include_dashboard=False)
    try:
        try:
            dataset = distributed.read_records(paths, args.text_field, args.id_field)
        except (OSError, ValueError) as err:
            raise CLIError(str(err)) from err
        settings = {"context": args.context} if args.context else {}
        annotated = distributed.annotate(
            dataset,
            pipeline=args.pipeline,
            model=args.model,
            lang=args.lang,
            text_field=args.text_field,
            id_field=args.id_field,
            actors=(low, high),
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            batch_size=args.batch_size,
            sentencizer=args.sentencizer,
            **settings,
        )
        before = set(distributed.list_files(output))
        try:
            rows_in = dataset.count()  # a separate pass of the readers: the summary's check
            distributed.write_annotations(
                annotated, output, output_format=args.output_format, checkpoint=checkpoint
            )
        except Exception as err:  # Ray logged the cause; the committed rows stay
            raise CLIError(
                f"the Ray job failed ({error_line(err)}); to write only the missing rows, "
                "rerun with --resume",
                code=1,
            ) from err
        files = distributed.list_files(output)
        rows_now = distributed.count_rows(sorted(set(files) - before))
        summary = distributed.summarize_output(files)
    finally:
        if started:
            ray.shutdown()
    return report(args.output, checkpoint, rows_in, rows_now, summary, resume)


def report(
    output: str,
    checkpoint: str,
    rows_in: int,
    rows_now: int,
    summary: OutputSummary,
    resume: bool,
) -> int:
    """Print the summary; remove the checkpoint when the output holds every input row.
    RETURNS (int): The exit code: 1 when any row failed or is missing."""
    from .distributed import remove_checkpoint

    done = f" ({summary.rows - rows_now} already done)" if resume else ""
    say(f"rows in {rows_in}, rows out {summary.rows}{done}, error rows {summary.error_rows}")
    if summary.repeated_ids:
        examples = ", ".join(repr(id_) for id_ in summary.examples)
        say(
            f"warning: {summary.repeated_ids} ids are on more than one row of {output} "
            f"(e.g. {examples}): ids are compared as strings (the number 1 and the string "
            '"1" are one id), and a resumed job skips every row of an id already written'
        )
    if summary.rows != rows_in:
        missing = "rerun with --resume to write the missing rows; " * (summary.rows < rows_in)
        say(
            f"error: {rows_in} rows in but {summary.rows} rows out: {missing}"
            f"the checkpoint {checkpoint} is kept"
        )
        return 1
    try:
        remove_checkpoint(checkpoint)
    except OSError as err:
        say(f"warning: cannot remove the finished job's checkpoint {checkpoint}: {err}")
    return 1 if summary.error_rows else 0


def prepare_output(output: str, checkpoint: str, resume: bool) -> None:
    """Check --output and --checkpoint before any cluster starts: folders (or missing), the
    output empty unless resuming, a checkpoint to resume from, both writable."""
    from .distributed import list_files, path_kind

    for option, path in (("--output", output), ("--checkpoint", checkpoint)):
        if path_kind(path) == "file":
            raise CLIError(f"{option} {path} is a file: the Ray engine writes a folder of files")
    if (checkpoint.rstrip("/") + "/").startswith(output.rstrip("/") + "/"):
        raise CLIError(f"--checkpoint {checkpoint} is inside --output {output}: put it beside")
    written = list_files(output)
    if resume and path_kind(checkpoint) == "missing":
        why = "its job finished, or ran without one" if written else "and no output folder"
        raise CLIError(f"nothing to resume: no checkpoint {checkpoint} ({why})")
    if not resume and written:
        raise CLIError(
            f"--output {output} already holds {len(written)} files: name a new or empty "
            "folder, or add --resume to finish the job that wrote them"
        )
    if not resume and list_files(checkpoint):
        raise CLIError(
            f"{checkpoint} holds the checkpoint of an earlier job: add --resume to finish "
            "it, or delete it to start again"
        )
    for option, path in (("--output", output), ("--checkpoint", checkpoint)):
        _check_writable(option, path)


def _check_writable(option: str, path: str) -> None:
    """Create a local folder and a file in it, so that an unwritable one fails before the
    job; URIs are left to the writers."""
    if "://" in path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".luke-spacy-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as err:
        raise CLIError(f"cannot write {option} {path}: {err.strerror or err}") from err


def input_paths(names: List[str]) -> List[str]:
    """Local globs expanded (sorted); URIs and folders as given; a missing local path fails."""
    paths: List[str] = []
    for name in names:
        if "://" in name:
            paths.append(name)
            continue
        found = sorted(glob.glob(os.path.expanduser(name)))
        if not found:
            raise CLIError(f"cannot read --input {name}: no such file")
        paths.extend(os.path.abspath(path) for path in found)
    return paths


def _absolute(path: str) -> str:
    """A local path made absolute (the cluster's processes do not share our working folder);
    a URI as it is."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _actors(value: str) -> Tuple[int, int]:
    low, _, high = value.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX or N, got {value}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {value}")
    return bounds

