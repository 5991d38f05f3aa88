"""Annotate corpora with Ray Data: one luke_ner pipeline per actor, many actors, many machines.

    import ray
    from luke_spacy.distributed import annotate, read_records, write_annotations

    ds = annotate(read_records("s3://corpus/"), pipeline="my_pipeline", actors=(1, 8))
    write_annotations(ds, "s3://corpus-ents/", checkpoint="s3://corpus-ents.checkpoint/")

Ray does the scheduling: `Dataset.map_batches` with a callable class (`LukeAnnotator`) on an
actor pool (`ActorPoolStrategy`), `num_gpus`/`num_cpus` per actor, Ray's readers and writers,
and Ray Data's actor restarts and task retries (`max_restarts=-1`, `max_task_retries=-1` are
its defaults for actor pools). Each actor loads the pipeline once, by name or path, with the
same `load_pipeline` as the local engine; no `nlp` object is ever pickled.

Every input row gives exactly one output row (`OUTPUT_SCHEMA`): a bad record, or a text that
makes the model raise, gives a row with `error` set instead of stopping the job. A job written
with a checkpoint (`write_annotations`) is resumed by Ray Data's own checkpointing: rows whose
id the checkpoint holds are dropped right after the read, and files of unfinished writes are
deleted, so the output holds every id once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

import pyarrow as pa
import pyarrow.compute as pc

try:
    from ray.data.datasource import FileBasedDatasource
except ImportError:  # the `ray` extra is not installed: parse_records still works
    FileBasedDatasource = object  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    import ray.data

# One row per input record. `entities` is null on error rows; `meta` holds the record's other
# fields as a JSON object (null when there are none).
ENTITY_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("label", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("score", pa.float64()),
    ]
)
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("entities", pa.list_(ENTITY_TYPE)),
        ("meta", pa.string()),
        ("error", pa.string()),
    ]
)
# The parsed input: what `read_records` gives and the actors receive. Its `id` column is the
# output's, so Ray Data's checkpoint filter (which runs right after the read) can match them.
RECORD_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("meta", pa.string()), ("error", pa.string())]
)
ID_COLUMN = "id"
# The column a raw table may carry instead of an id: "path:n" (see `read_records`).
SOURCE_COLUMN = "_source"
# Key of the output schema's metadata: pipeline name and version, component settings.
METADATA_KEY = b"luke_spacy"
# CUDA out-of-memory halves max_batch_items down to this before giving up on a batch.
MIN_BATCH_ITEMS = 128
READ_ROWS = 4096
# The key under which `_decoded_rows` names a row's column that is not UTF-8.
_NOT_UTF8 = "\0not-utf-8"
OUTPUT_EXTENSIONS = {"parquet": ".parquet", "jsonl": ".json"}


def parse_records(
    batch: pa.Table, *, text_field: str = "text", id_field: Optional[str] = "id"
) -> pa.Table:
    """Turn input rows into `RECORD_SCHEMA` rows: id, text, meta (JSON), error.

    Tables in `RECORD_SCHEMA` (what `read_records` gives) are returned as they are. Other
    tables (Parquet, any Ray dataset) carry the text and id as columns; the other columns
    become meta; a text that is no string, a row without its id, or a string that is not
    UTF-8 makes that row an error row.
    batch (pa.Table): The input rows.
    text_field (str): Column of the text.
    id_field (Optional[str]): Column of the id; None takes the `_source` column ("path:n").
    RETURNS (pa.Table): The records, in `RECORD_SCHEMA`.
    """
    names = batch.column_names
    if names == RECORD_SCHEMA.names:
        return batch
    if id_field is None and SOURCE_COLUMN not in names:
        raise ValueError("no id: set id_field, or read the input with read_records")
    if id_field is not None and id_field not in names and SOURCE_COLUMN not in names:
        raise ValueError(f"the input has no id column {id_field!r} (columns: {names})")
    rows = [_record(row, None, text_field, id_field) for row in _decoded_rows(batch)]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def _decoded_rows(table: pa.Table) -> List[Dict[str, Any]]:
    """The rows of a table as dicts; a string that is not UTF-8 (Parquet does not check)
    fails only its row: the row gets `_NOT_UTF8` naming the column instead."""
    columns: Dict[str, List[Any]] = {}
    bad: Dict[int, str] = {}
    for name in table.column_names:
        try:
            columns[name] = table[name].to_pylist()
        except UnicodeDecodeError:
            values = []
            for i, scalar in enumerate(table[name]):
                try:
                    values.append(scalar.as_py())
                except UnicodeDecodeError:
                    values.append(None)
                    bad.setdefault(i, name)
            columns[name] = values
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    for i, name in bad.items():
        rows[i][_NOT_UTF8] = name
    return rows


def _record(
    fields: Dict[str, Any], source: Optional[str], text_field: str, id_field: Optional[str]
) -> Dict[str, Any]:
    """One record from its fields; the fields other than text, id and source become meta."""
    fields = dict(fields)
    source = fields.pop(SOURCE_COLUMN, source)
    not_utf8 = fields.pop(_NOT_UTF8, None)
    id_, error = source, None
    if id_field is not None:
        value = fields.pop(id_field, None)
        if value is None:
            error = f"no {id_field!r} field (the id)"
        elif not _utf8(_id_string(value)):
            error = f"the {id_field!r} field holds a lone surrogate (not Unicode text)"
        else:
            id_ = _id_string(value)
    text = fields.pop(text_field, None)
    if error is None and not_utf8 is not None:
        error = f"the {not_utf8!r} column is not UTF-8"
    if error is None and not isinstance(text, str):
        what = "no" if text is None else f"a {type(text).__name__} in the"
        error = f"{what} {text_field!r} field, not a string"
    return {
        "id": id_,
        "text": text if isinstance(text, str) else None,
        "meta": meta_json(fields),
        "error": error,
    }


def _id_string(value: Any) -> str:
    """Ids are compared as strings: a string as it is, any other value as its JSON text (so
    the number 1 and the string "1" are the same id)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def meta_json(fields: Optional[Dict[str, Any]]) -> Optional[str]:
    """A record's other fields as strict JSON (None when there are none).

    NaN and infinite numbers (`NaN`, `Infinity` and `1e400` in the input) are written as
    null, as JSON has no such numbers; values JSON does not know (dates in Parquet) as their
    text; lone surrogates (legal in JSON input, not in UTF-8) as \\u escapes.
    """
    if not fields:
        return None
    from .records import json_line

    return json_line(fields, default=str)


def _utf8(text: str) -> bool:
    """Whether a string can be stored as UTF-8 (Arrow's strings): no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class LukeAnnotator:
    """The callable class of `Dataset.map_batches`: a pyarrow batch in, `OUTPUT_SCHEMA` out.

    The constructor loads the pipeline (in each actor, once) with `loading.load_pipeline`, on
    the GPU that Ray assigned the actor, else on CPU with `threads` torch threads. Each batch
    runs through `annotate_texts`.
    """

    def __init__(
        self,
        *,
        pipeline: Optional[str] = None,
        model: Optional[str] = None,
        lang: str = "en",
        overrides: Optional[Dict[str, Any]] = None,
        sentencizer: Optional[bool] = None,
        text_field: str = "text",
        id_field: Optional[str] = "id",
        threads: Optional[int] = None,
        gpu: Optional[int] = None,
    ) -> None:
        """Load the pipeline.

        pipeline (Optional[str]): Saved pipeline folder or installed package name.
        model (Optional[str]): Hub id or local checkpoint folder, for a blank pipeline.
        lang (str): Language of the blank pipeline.
        overrides (Optional[Dict[str, Any]]): luke_ner settings (context, dtype,
            max_batch_items).
        sentencizer (Optional[bool]): As in `load_pipeline`.
        text_field (str): For raw input tables, see `parse_records`.
        id_field (Optional[str]): For raw input tables, see `parse_records`.
        threads (Optional[int]): Torch threads on CPU (the actor's CPUs); None leaves torch's.
        gpu (Optional[int]): GPU id; None takes the one Ray assigned (CPU when none).
        """
        from .loading import load_pipeline, luke_ner_names

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if gpu is None:
            gpu = _assigned_gpu()
        self.nlp, self.spans_keys = load_pipeline(
            model=model,
            pipeline=pipeline,
            lang=lang,
            gpu=gpu,
            overrides=overrides,
            sentencizer=sentencizer,
        )
        self.text_field = text_field
        self.id_field = id_field
        self.components = [self.nlp.get_pipe(name) for name in luke_ner_names(self.nlp)]
        self.schema = OUTPUT_SCHEMA.with_metadata(
            {METADATA_KEY: json.dumps(pipeline_metadata(self.nlp, model=model))}
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = parse_records(batch, text_field=self.text_field, id_field=self.id_field)
        rows = rows.to_pylist()
        todo = [i for i, row in enumerate(rows) if row["error"] is None]
        out = [{**row, "entities": None} for row in rows]
        for i, result in zip(todo, self.annotate_texts([rows[i]["text"] for i in todo])):
            if isinstance(result, str):
                out[i]["error"] = result
            else:
                out[i]["entities"] = result
        return pa.Table.from_pylist(out, schema=self.schema)

    def annotate_texts(self, texts: List[str]) -> List[Union[List[Dict[str, Any]], str]]:
        """The entities of each text, or the error message of a text that failed.

        CUDA out-of-memory retries the batch with half the `max_batch_items`, down to
        `MIN_BATCH_ITEMS`; then, or on any other error, `records.run_isolated` runs each
        text alone and a text that still fails gets the local engine's error message.
        """
        from .records import doc_to_record, pipeline_error, run_isolated

        budgets = [proc.settings.max_batch_items for proc in self.components]
        try:
            results = run_isolated(
                self.nlp, texts, retry=lambda err: _is_cuda_oom(err) and self._shrink_budget()
            )
        finally:
            for proc, budget in zip(self.components, budgets):
                proc.set_max_batch_items(budget)
        return [
            pipeline_error(result)
            if isinstance(result, Exception)
            else doc_to_record(result, self.spans_keys)["entities"]
            for result in results
        ]

    def _shrink_budget(self) -> bool:
        """Halve max_batch_items after CUDA out-of-memory; False when at the minimum."""
        import torch

        budgets = [proc.settings.max_batch_items for proc in self.components]
        if not budgets or budgets[0] <= MIN_BATCH_ITEMS:
            return False
        for proc, budget in zip(self.components, budgets):
            proc.set_max_batch_items(max(MIN_BATCH_ITEMS, budget // 2))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True


def annotate(
    dataset: ray.data.Dataset,
    *,
    pipeline: Optional[str] = None,
    model: Optional[str] = None,
    lang: str = "en",
    text_field: str = "text",
    id_field: Optional[str] = "id",
    actors: Tuple[int, int] = (1, 1),
    gpus_per_actor: float = 0,
    cpus_per_actor: Optional[float] = None,
    batch_size: int = 64,
    context: Optional[str] = None,
    dtype: Optional[str] = None,
    max_batch_items: Optional[int] = None,
    sentencizer: Optional[bool] = None,
) -> ray.data.Dataset:
    """Annotate a Ray dataset on a pool of actors; lazy, like any Ray dataset.

    dataset (ray.data.Dataset): The output of `read_records`, or rows with a text and an id
        column (other columns become meta).
    pipeline (Optional[str]): Saved pipeline folder or installed package, loaded by each actor.
    model (Optional[str]): Hub id or local checkpoint folder, for a blank pipeline instead.
    lang (str): Language of the blank pipeline.
    text_field (str): Column of the text, for rows not from `read_records`.
    id_field (Optional[str]): Column of the id, for rows not from `read_records`.
    actors (Tuple[int, int]): Least and most actors of the autoscaling pool.
    gpus_per_actor (float): GPUs Ray reserves for each actor.
    cpus_per_actor (Optional[float]): CPUs Ray reserves for each actor, also its torch threads
        on CPU; None is Ray's default, 1 (GPU actors too).
    batch_size (int): Rows per actor call (and per `nlp.pipe` batch).
    context (Optional[str]): luke_ner's context setting; None keeps the pipeline's.
    dtype (Optional[str]): luke_ner's dtype setting; None keeps the pipeline's.
    max_batch_items (Optional[int]): luke_ner's budget; None keeps the pipeline's.
    sentencizer (Optional[bool]): As in `load_pipeline`.
    RETURNS (ray.data.Dataset): One `OUTPUT_SCHEMA` row per input row.
    """
    from ray.data import ActorPoolStrategy

    low, high = actors
    settings = {"context": context, "dtype": dtype, "max_batch_items": max_batch_items}
    overrides = {key: value for key, value in settings.items() if value is not None}
    return dataset.map_batches(
        LukeAnnotator,
        fn_constructor_kwargs={
            "pipeline": pipeline,
            "model": model,
            "lang": lang,
            "overrides": overrides,
            "sentencizer": sentencizer,
            "text_field": text_field,
            "id_field": id_field,
            "threads": max(1, int(cpus_per_actor or 1)) if not gpus_per_actor else None,
        },
        compute=ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        udf_modifying_row_count=False,
    )


def write_annotations(
    annotated: ray.data.Dataset,
    output: str,
    *,
    output_format: str = "parquet",
    checkpoint: Optional[str] = None,
) -> None:
    """Write `annotate`'s rows as files under `output`, through Ray Data's checkpointing.

    With `checkpoint`, Ray Data records the id of every row it writes under that path
    (`ray.data.checkpoint.CheckpointConfig(id_column="id")`, a two-phase commit per output
    file). Run again with the same input, output and checkpoint, the job deletes the files
    of writes that never committed, drops the rows whose id is recorded right after the
    read, and writes the others: the output holds every id once. The input must come from
    `read_records` (the read gives the output's id), and its ids must be unique: a row
    whose id was written by another row is dropped too. The checkpoint is kept after
    success; remove it with `remove_checkpoint`.

    annotated (ray.data.Dataset): The output of `annotate`.
    output (str): Folder or URI of the output files.
    output_format (str): "parquet" or "jsonl" (JSON lines, *.json files).
    checkpoint (Optional[str]): Folder or URI of the checkpoint, on storage every node can
        reach, never inside `output` (resuming deletes files there by name); None writes
        without one.
    """
    from ray.data.checkpoint import CheckpointConfig

    if output_format not in OUTPUT_EXTENSIONS:
        raise ValueError(f"output_format is one of {sorted(OUTPUT_EXTENSIONS)}")
    context = annotated.context
    previous = context.checkpoint_config
    if checkpoint is not None:
        context.checkpoint_config = CheckpointConfig(
            id_column=ID_COLUMN, checkpoint_path=checkpoint, delete_checkpoint_on_success=False
        )
    try:
        if output_format == "parquet":
            annotated.write_parquet(output)
        else:
            # pandas' default of 10 digits would round the scores.
            annotated.write_json(output, double_precision=15)
    finally:
        context.checkpoint_config = previous


# Readers


def read_records(
    paths: Union[str, List[str]],
    text_field: str = "text",
    id_field: Optional[str] = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """Read JSONL (*.jsonl, *.json) or Parquet (*.parquet) files as `RECORD_SCHEMA` rows.

    A row's id is its `id_field`, else "path:n" (n the 1-based line of a JSONL file, or row
    of a Parquet file). A JSONL line that is no record (not UTF-8, broken JSON, no string
    `text_field`) is read as its error, with the local engine's words. Paths are files,
    folders or URIs that Ray's file readers accept; all JSONL or all Parquet, by extension.
    """
    import ray.data

    paths = [paths] if isinstance(paths, str) else list(paths)
    if input_format(paths) == "parquet":
        datasource = ParquetRows(paths, text_field, id_field, file_extensions=["parquet"])
    else:
        datasource = JSONLines(paths, text_field, id_field, file_extensions=["jsonl", "json"])
    return ray.data.read_datasource(datasource, **read_args)


def input_format(paths: List[str]) -> str:
    """What the input files (and the files in input folders) are, by extension: "jsonl"
    (*.jsonl, *.json) or "parquet". Raises ValueError for a mix, or for neither."""
    formats = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
    found = set()
    for path in paths:
        names = [path] if _extension(path) in formats else list_files(path)
        found |= {formats[_extension(name)] for name in names if _extension(name) in formats}
    if len(found) != 1:
        raise ValueError("inputs are all JSONL (*.jsonl, *.json) or all Parquet (*.parquet)")
    return found.pop()


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


class _RecordFiles(FileBasedDatasource):
    def __init__(
        self,
        paths: Union[str, List[str]],
        text_field: str = "text",
        id_field: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(paths, **kwargs)
        self.text_field = text_field
        self.id_field = id_field


class JSONLines(_RecordFiles):
    """JSONL files as `jsonl_tables`."""

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        return jsonl_tables(f, path, self.text_field, self.id_field)


class ParquetRows(_RecordFiles):
    """Parquet files as `parquet_tables`."""

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        return parquet_tables(f, path, self.text_field, self.id_field)


def jsonl_tables(
    f: Any, path: str, text_field: str = "text", id_field: Optional[str] = None
) -> Iterator[pa.Table]:
    """A JSONL file read as the local engine reads it (`reading.read_lines`: blank lines skipped,
    UTF-8 per line, the same errors), as `RECORD_SCHEMA` tables."""
    from .reading import Source, read_lines

    rows: List[Dict[str, Any]] = []
    for item in read_lines(Source(Path(path), jsonl=True), f.readall().split(b"\n"), text_field):
        if item.error is None:
            fields = {**(item.meta or {}), text_field: item.text}
            rows.append(_record(fields, item.source, text_field, id_field))
        else:
            rows.append(_item_error(item, id_field))
        if len(rows) == READ_ROWS:
            yield pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def _item_error(item: Any, id_field: Optional[str]) -> Dict[str, Any]:
    """The error row of a line that is no record: its own id when it has a usable one."""
    value = (item.meta or {}).get(id_field) if id_field is not None else None
    id_ = item.source
    if value is not None and _utf8(_id_string(value)):
        id_ = _id_string(value)
    return {"id": id_, "text": item.text, "meta": meta_json(item.meta), "error": item.error}


def parquet_tables(
    f: Any, path: str, text_field: str = "text", id_field: Optional[str] = None
) -> Iterator[pa.Table]:
    """A Parquet file as `RECORD_SCHEMA` tables (`parse_records` of its rows, the id
    "path:n" when `id_field` is None)."""
    import pyarrow.parquet as pq

    # Parquet needs a seekable file and Ray hands over a stream: read the file whole.
    parquet = pq.ParquetFile(pa.BufferReader(f.readall()))
    start = 1
    for batch in parquet.iter_batches(batch_size=READ_ROWS):
        sources = pa.array([f"{path}:{start + i}" for i in range(batch.num_rows)])
        table = pa.Table.from_batches([batch])
        if SOURCE_COLUMN in table.column_names:
            table = table.drop_columns([SOURCE_COLUMN])
        table = table.append_column(SOURCE_COLUMN, sources)
        yield parse_records(table, text_field=text_field, id_field=id_field)
        start += batch.num_rows


# The output and the checkpoint


@dataclass
class OutputSummary:
    """What an output folder holds: rows, error rows, and ids found on more than one row."""

    rows: int = 0
    error_rows: int = 0
    repeated_ids: int = 0
    examples: List[str] = field(default_factory=list)


def summarize_output(files: List[str], examples: int = 3) -> OutputSummary:
    """Rows, error rows and repeated ids of output files (*.parquet, *.json), counted on
    the cluster (a Ray Data group-by on `id`), so that the driver never holds the ids.

    files (List[str]): The output files; other names are ignored.
    examples (int): How many repeated ids to name.
    RETURNS (OutputSummary): The counts.
    """
    import ray.data
    from ray.data.aggregate import Count

    files = [name for name in files if name.endswith(tuple(OUTPUT_EXTENSIONS.values()))]
    if not files:
        return OutputSummary()
    rows = ray.data.read_datasource(OutputColumns(files, columns=[ID_COLUMN, "error"]))
    # One partition per file, up to Ray's default: a small output is not split 200 ways.
    grouped = rows.groupby(ID_COLUMN, num_partitions=min(len(files), 200)).aggregate(
        Count(alias_name="rows"), Count(on="error", ignore_nulls=True, alias_name="errors")
    )
    parts = grouped.map_batches(
        _id_counts, fn_kwargs={"examples": examples}, batch_format="pyarrow"
    ).take_all()
    summary = OutputSummary()
    for part in parts:
        summary.rows += part["rows"]
        summary.error_rows += part["errors"]
        summary.repeated_ids += part["repeated"]
        summary.examples.extend(part["examples"])
    summary.examples = sorted(summary.examples)[:examples]
    return summary


def _id_counts(batch: pa.Table, examples: int) -> pa.Table:
    """One row for a batch of (id, rows, errors) groups: totals, and the ids seen twice."""
    repeated = batch.filter(pc.greater(batch["rows"], 1))[ID_COLUMN]
    return pa.table(
        {
            "rows": [pc.sum(batch["rows"]).as_py() or 0],
            "errors": [pc.sum(batch["errors"]).as_py() or 0],
            "repeated": [len(repeated)],
            "examples": [repeated.slice(0, examples).to_pylist()],
        }
    )


class OutputColumns(FileBasedDatasource):
    """Columns of output files (*.parquet, *.json) as Ray reads them, for the summary.
    (Our own reader, as `read_records`: in Ray 2.60, `read_parquet` of a list of files
    lists them on threads that race on importing fsspec's optional HTTP module.)"""

    def __init__(self, paths: List[str], columns: List[str], **kwargs: Any):
        super().__init__(paths, **kwargs)
        self.columns = columns

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        yield output_table(pa.BufferReader(f.readall()), path, self.columns)


def output_table(file: Any, name: str, columns: List[str]) -> pa.Table:
    """Columns of one output file (Parquet, or JSON lines for *.json), in `OUTPUT_SCHEMA`'s
    types."""
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    schema = pa.schema([OUTPUT_SCHEMA.field(column) for column in columns])
    if name.endswith(".parquet"):
        return pq.read_table(file, columns=columns).cast(schema)
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pajson.read_json(file, parse_options=options).select(columns)


def count_rows(files: List[str]) -> int:
    """Rows of output files (*.parquet, *.json), one file at a time (Parquet's footers)."""
    import pyarrow.parquet as pq

    rows = 0
    for name in files:
        if name.endswith(".parquet"):
            fs, path = _filesystem(name)
            with fs.open_input_file(path) as file:
                rows += pq.ParquetFile(file).metadata.num_rows
        elif name.endswith(".json"):
            rows += read_output([name], [ID_COLUMN]).num_rows
    return rows


def read_output(files: List[str], columns: List[str]) -> pa.Table:
    """Columns of the output files among `files` (*.parquet, *.json); others are ignored."""
    schema = pa.schema([OUTPUT_SCHEMA.field(column) for column in columns])
    tables = [schema.empty_table()]
    for name in files:
        if name.endswith(tuple(OUTPUT_EXTENSIONS.values())):
            fs, path = _filesystem(name)
            with fs.open_input_file(path) as file:
                tables.append(output_table(file, name, columns))
    return pa.concat_tables(tables)


def list_files(path: str) -> List[str]:
    """The files under a folder or URI, recursively; none when it does not exist."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(path)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    prefix = path[: path.index("://") + 3] if "://" in path else ""
    return [prefix + info.path for info in infos if info.type == pafs.FileType.File]


def path_kind(path: str) -> str:
    """What a local path or URI names: "missing", "file" or "folder"."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(path)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        return "missing"
    return "folder" if kind == pafs.FileType.Directory else "file"


def remove_checkpoint(path: str) -> None:
    """Delete a finished job's checkpoint folder, if there is one."""
    fs, root = _filesystem(path)
    if path_kind(path) != "missing":
        fs.delete_dir(root)


def _filesystem(path: str) -> Tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


# Helpers


def pipeline_metadata(nlp: Any, *, model: Optional[str] = None) -> Dict[str, Any]:
    """Name, version and luke_ner settings of a pipeline, for the output's metadata."""
    from . import __version__
    from .loading import luke_ner_names

    settings = ("context", "dtype", "max_batch_items")
    components = {
        name: {key: nlp.get_pipe(name).cfg.get(key) for key in settings}
        for name in luke_ner_names(nlp)
    }
    return {
        "pipeline": f"{nlp.meta.get('lang', nlp.lang)}_{nlp.meta.get('name', 'pipeline')}",
        "version": nlp.meta.get("version"),
        "model": model,
        "luke_spacy": __version__,
        "components": components,
    }


def _assigned_gpu() -> int:
    """GPU 0 when Ray gave this actor GPUs (it sets CUDA_VISIBLE_DEVICES to them), else -1."""
    try:
        import ray
    except ImportError:
        return -1
    if not ray.is_initialized():
        return -1
    return 0 if ray.get_gpu_ids() else -1


def _is_cuda_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "CUDA out of memory" in str(err)
    )
