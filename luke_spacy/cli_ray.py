"""`luke-spacy annotate --engine ray`: the command line of `luke_spacy.distributed`.

    luke-spacy annotate --engine ray -i 'corpus/*.jsonl' --output ents/ --model /path/to/ckpt \
        --actors 1:8 --gpus-per-actor 1
    luke-spacy annotate --engine ray -i s3://bucket/corpus/ --output s3://bucket/ents/ \
        --pipeline my_pipeline --ray-address auto --resume s3://bucket/ents/

Prints a summary (rows in, rows out, error rows) on stderr; exits 1 when any row failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List, Tuple

from .errors import PROG, CLIError, error_line

ENGINES = ("local", "ray")
FORMATS = ("parquet", "jsonl")


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
        help="field or column of the record id (default: FILE:LINE of the input)",
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
        default=None,
        metavar="DIR",
        help="skip the ids of rows without error already written under DIR",
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
    if args.texts:
        raise CLIError("--engine ray reads --input files, not texts given as arguments")
    if not args.input or args.output in (None, "-"):
        raise CLIError("--engine ray needs --input FILE (JSONL or Parquet) and --output DIR")
    if args.gpu != -1:
        raise CLIError("--engine ray: use --gpus-per-actor; Ray assigns the GPUs")
    paths = input_paths(args.input)
    low, high = args.actors
    started = not ray.is_initialized()
    if started:
        # A local cluster needs logical CPUs beyond the actors' for the read and write stages,
        # else a pool that takes every core starves them and the job never ends.
        cpus = None
        if args.ray_address is None:
            cpus = max(os.cpu_count() or 1, int(high * (args.cpus_per_actor or 1)) + 2)
        ray.init(address=args.ray_address, num_cpus=cpus, include_dashboard=False)
    try:
        try:
            done = distributed.done_ids(args.resume) if args.resume else None
            dataset = distributed.read_records(paths, args.text_field)
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
            skip_ids=done,
            **settings,
        )
        before = set(distributed.list_files(args.output))
        try:
            rows_in = dataset.count()  # a separate pass of the readers: the summary's check
            if args.output_format == "parquet":
                annotated.write_parquet(args.output)
            else:
                annotated.write_json(args.output)
        except Exception as err:  # Ray logged the cause; the rows written so far stay
            raise CLIError(
                f"the Ray job failed ({error_line(err)}); to write only the missing rows, "
                f"rerun with --resume {args.output}",
                code=1,
            ) from err
        written = sorted(set(distributed.list_files(args.output)) - before)
        rows_out, errors = distributed.count_rows(written)
    finally:
        if started:
            ray.shutdown()
    skipped = rows_in - rows_out
    print(
        f"{PROG}: rows in {rows_in}, rows out {rows_out}, error rows {errors}"
        + (f", already done {skipped}" if done is not None else ""),
        file=sys.stderr,
    )
    lost = done is None and rows_out != rows_in
    if lost:
        print(
            f"{PROG}: error: {rows_in} rows in but {rows_out} rows out: rerun with --resume "
            f"{args.output} for missing rows, and deduplicate on id for repeated ones",
            file=sys.stderr,
        )
    return 1 if errors or lost else 0


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


def _actors(value: str) -> Tuple[int, int]:
    low, _, high = value.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX or N, got {value}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {value}")
    return bounds

