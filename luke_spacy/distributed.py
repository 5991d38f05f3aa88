"""Annotate corpora with Ray Data: one luke_ner pipeline per actor, many actors, many machines.

    import ray
    from luke_spacy.distributed import annotate

    ds = annotate(ray.data.read_parquet("s3://corpus/"), pipeline="my_pipeline", actors=(1, 8))
    ds.write_parquet("s3://corpus-ents/")

Ray does the scheduling: `Dataset.map_batches` with a callable class (`LukeAnnotator`) on an
actor pool (`ActorPoolStrategy`), `num_gpus`/`num_cpus` per actor, Ray's readers and writers,
and Ray Data's actor restarts and task retries (`max_restarts=-1`, `max_task_retries=-1` are
its defaults for actor pools). Each actor loads the pipeline once, by name or path, with the
same `load_pipeline` as the local engine; no `nlp` object is ever pickled.

Every input row gives exactly one output row (`OUTPUT_SCHEMA`): a bad record, or a text that
makes the model raise, gives a row with `error` set instead of stopping the job. Output is
at-least-once across restarts of a whole job (`skip_ids`): deduplicate on `id`, preferring rows
whose `error` is null.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

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
# The parsed input: what the actors receive.
RECORD_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("meta", pa.string()), ("error", pa.string())]
)
# Columns added by the readers below: a stable id "path:line" (1-based line of a JSONL file,
# 1-based row of a Parquet file); JSONL records as the local engine reads them: text, the other
# fields (JSON), and why the line is no record.
SOURCE_COLUMN = "_source"
ITEM_COLUMNS = ("_text", "_meta", "_error")
ITEM_SCHEMA = pa.schema([(name, pa.string()) for name in (SOURCE_COLUMN, *ITEM_COLUMNS)])
# Key of the output schema's metadata: pipeline name and version, component settings.
METADATA_KEY = b"luke_spacy"
# CUDA out-of-memory halves max_batch_items down to this before giving up on a batch.
MIN_BATCH_ITEMS = 128
# Test-only hook: "ID=exit,ID=raise" makes the actor whose batch holds ID exit its process
# (os._exit) or raise, once: it first leaves a marker file in the folder CRASH_MARKERS_ENV.
CRASH_ENV = "LUKE_SPACY_TEST_CRASH"
CRASH_MARKERS_ENV = "LUKE_SPACY_TEST_CRASH_MARKERS"
READ_ROWS = 4096


def parse_records(
    batch: pa.Table,
    *,
    text_field: str = "text",
    id_field: Optional[str] = "id",
    skip_ids: Optional[pa.Array] = None,
) -> pa.Table:
    """Turn input rows into `RECORD_SCHEMA` rows: id, text, meta (JSON), error.

    Rows of `read_records` JSONL files carry the record or why the line is none (an error
    row); a record without its id is an error row too. Other tables (Parquet, any Ray dataset)
    carry the text and id as columns; the other columns become meta; a text that is no string
    is an error row.
    batch (pa.Table): The input rows.
    text_field (str): Field or column of the text.
    id_field (Optional[str]): Field or column of the id; None takes the `_source` column
        ("path:line") that `read_records` adds.
    skip_ids (Optional[pa.Array]): Ids to drop (already annotated, for resuming), or a Ray
        ObjectRef of them.
    RETURNS (pa.Table): The records, in `RECORD_SCHEMA`.
    """
    names = batch.column_names
    if id_field is None and SOURCE_COLUMN not in names:
        raise ValueError("no id: set id_field, or read the input with read_records")
    if id_field is not None and id_field not in names and SOURCE_COLUMN not in names:
        raise ValueError(f"the input has no id column {id_field!r} (columns: {names})")
    if ITEM_COLUMNS[-1] in names:
        rows = [_item_record(row, text_field, id_field) for row in batch.to_pylist()]
    else:
        rows = [_record(row, None, text_field, id_field) for row in batch.to_pylist()]
    table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    if skip_ids is not None and not isinstance(skip_ids, pa.Array):
        import ray

        # Ray resolves ObjectRef arguments of tasks, not fn_kwargs of a stage fused into actors.
        skip_ids = ray.get(skip_ids)
    if skip_ids is not None and len(skip_ids):
        table = table.filter(pc.invert(pc.is_in(table["id"], value_set=skip_ids)))
    return table


def _item_record(row: Dict[str, Any], text_field: str, id_field: Optional[str]) -> Dict:
    """The record of a `JSONLines` row: its error as the local engine words it, or its id."""
    text, meta, error = (row[name] for name in ITEM_COLUMNS)
    fields = json.loads(meta) if meta else {}
    if error is not None:
        value = fields.get(id_field) if id_field is not None else None
        id_ = row[SOURCE_COLUMN] if value is None else _id_string(value)
        return {"id": id_, "text": text, "meta": meta, "error": error}
    return _record({**fields, text_field: text}, row[SOURCE_COLUMN], text_field, id_field)


def _record(
    fields: Dict[str, Any], source: Optional[str], text_field: str, id_field: Optional[str]
) -> Dict[str, Any]:
    """One record from its fields; the fields other than text, id and source become meta."""
    fields = dict(fields)
    source = fields.pop(SOURCE_COLUMN, source)
    if id_field is None:
        id_ = source
    else:
        value = fields.pop(id_field, None)
        if value is None:
            return _error_row(source, fields.get(text_field), f"no {id_field!r} field (the id)")
        id_ = _id_string(value)
    text = fields.pop(text_field, None)
    if not isinstance(text, str):
        what = "no" if text is None else f"a {type(text).__name__} in the"
        return _error_row(id_, None, f"{what} {text_field!r} field, not a string")
    meta = json.dumps(fields, ensure_ascii=False, default=str) if fields else None
    return {"id": id_, "text": text, "meta": meta, "error": None}


def _id_string(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _error_row(id_: Optional[str], text: Optional[str], error: str) -> Dict[str, Any]:
    return {"id": id_, "text": text, "meta": None, "error": error}


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
        if batch.schema.names != RECORD_SCHEMA.names:
            batch = parse_records(batch, text_field=self.text_field, id_field=self.id_field)
        rows = batch.to_pylist()
        _maybe_crash(row["id"] for row in rows)
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
            while True:
                try:
                    docs = self.nlp.pipe(texts, batch_size=max(1, len(texts)))
                    return [doc_to_record(doc, self.spans_keys)["entities"] for doc in docs]
                except Exception as err:  # isolate the texts that cause it, below
                    if not (_is_cuda_oom(err) and self._shrink_budget()):
                        break
            results = run_isolated(self.nlp, texts)
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
    skip_ids: Optional[Iterable[str]] = None,
) -> ray.data.Dataset:
    """Annotate a Ray dataset on a pool of actors; lazy, like any Ray dataset.

    dataset (ray.data.Dataset): Rows with a text and an id column (other columns become meta),
        or the output of `read_records`.
    pipeline (Optional[str]): Saved pipeline folder or installed package, loaded by each actor.
    model (Optional[str]): Hub id or local checkpoint folder, for a blank pipeline instead.
    lang (str): Language of the blank pipeline.
    text_field (str): Column or JSON field of the text.
    id_field (Optional[str]): Column or JSON field of the id; None for the "path:line" of
        `read_records`.
    actors (Tuple[int, int]): Least and most actors of the autoscaling pool.
    gpus_per_actor (float): GPUs Ray reserves for each actor.
    cpus_per_actor (Optional[float]): CPUs Ray reserves for each actor, also its torch threads
        on CPU; None is Ray's default, 1 (GPU actors too).
    batch_size (int): Rows per actor call (and per `nlp.pipe` batch).
    context (Optional[str]): luke_ner's context setting; None keeps the pipeline's.
    dtype (Optional[str]): luke_ner's dtype setting; None keeps the pipeline's.
    max_batch_items (Optional[int]): luke_ner's budget; None keeps the pipeline's.
    sentencizer (Optional[bool]): As in `load_pipeline`.
    skip_ids (Optional[Iterable[str]]): Ids not to annotate again (see `done_ids`).
    RETURNS (ray.data.Dataset): One `OUTPUT_SCHEMA` row per input row not skipped.
    """
    import ray
    from ray.data import ActorPoolStrategy

    low, high = actors
    settings = {"context": context, "dtype": dtype, "max_batch_items": max_batch_items}
    overrides = {key: value for key, value in settings.items() if value is not None}
    skip = None
    if skip_ids is not None:
        ids = pa.array(sorted(set(skip_ids)), pa.string())
        # A top-level ObjectRef argument: Ray hands each task the array, stored once.
        skip = ray.put(ids) if len(ids) else None
    records = dataset.map_batches(
        parse_records,
        batch_format="pyarrow",
        fn_kwargs={"text_field": text_field, "id_field": id_field, "skip_ids": skip},
    )
    return records.map_batches(
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


# Readers


def read_records(
    paths: Union[str, List[str]], text_field: str = "text", **read_args: Any
) -> ray.data.Dataset:
    """Read JSONL (*.jsonl, *.json) or Parquet (*.parquet) files with a stable id per row.

    Every row gets `_source` = "path:n" (n the 1-based line or row); a JSONL line that is no
    record (not UTF-8, broken JSON, no string `text_field`) is read as its error, which
    `parse_records` makes an error row. Paths are files, folders or URIs that Ray's file
    readers accept; all JSONL or all Parquet, by extension.
    """
    import ray.data

    paths = [paths] if isinstance(paths, str) else list(paths)
    names = [path.lower() for path in paths]
    if all(name.endswith(".parquet") for name in names):
        datasource = ParquetRows(paths, file_extensions=["parquet"])
    elif all(name.endswith((".jsonl", ".json")) for name in names):
        datasource = JSONLines(paths, text_field, file_extensions=["jsonl", "json"])
    else:
        raise ValueError("inputs are all JSONL (*.jsonl, *.json) or all Parquet (*.parquet)")
    return ray.data.read_datasource(datasource, **read_args)


class JSONLines(FileBasedDatasource):
    """JSONL files as `jsonl_tables`."""

    def __init__(self, paths: Union[str, List[str]], text_field: str = "text", **kwargs: Any):
        super().__init__(paths, **kwargs)
        self.text_field = text_field

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        return jsonl_tables(f, path, self.text_field)


class ParquetRows(FileBasedDatasource):
    """Parquet files as `parquet_tables`."""

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        return parquet_tables(f, path)


def jsonl_tables(f: Any, path: str, text_field: str) -> Iterator[pa.Table]:
    """A JSONL file read as the local engine reads it (`cli._read_lines`: blank lines skipped,
    UTF-8 per line, the same errors): `_source` ("path:line") and the `ITEM_COLUMNS`."""
    from .reading import Source, read_lines

    rows: List[Dict[str, Any]] = []
    for item in read_lines(Source(Path(path), jsonl=True), f.readall().split(b"\n"), text_field):
        meta = json.dumps(item.meta, ensure_ascii=False) if item.meta else None
        values = (item.source, item.text, meta, item.error)
        rows.append(dict(zip(ITEM_SCHEMA.names, values)))
        if len(rows) == READ_ROWS:
            yield pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


def parquet_tables(f: Any, path: str) -> Iterator[pa.Table]:
    """A Parquet file with a `_source` column ("path:row")."""
    import pyarrow.parquet as pq

    # Parquet needs a seekable file and Ray hands over a stream: read the file whole.
    parquet = pq.ParquetFile(pa.BufferReader(f.readall()))
    start = 1
    for batch in parquet.iter_batches(batch_size=READ_ROWS):
        sources = pa.array([f"{path}:{start + i}" for i in range(batch.num_rows)])
        yield pa.Table.from_batches([batch]).append_column(SOURCE_COLUMN, sources)
        start += batch.num_rows


# Helpers


def done_ids(path: str) -> List[str]:
    """The ids of rows without error already written under `path` (Parquet or JSON lines)."""
    table = read_output(list_files(path), ["id", "error"])
    return table.filter(pc.is_null(table["error"]))["id"].to_pylist()


def count_rows(files: List[str]) -> Tuple[int, int]:
    """Rows and error rows of output files (Parquet or JSON lines)."""
    errors = read_output(files, ["error"])["error"]
    return len(errors), len(errors) - errors.null_count


def read_output(files: List[str], columns: List[str]) -> pa.Table:
    """Columns of the output files among `files` (*.parquet, *.json); others are ignored."""
    import pyarrow.dataset as pads

    schema = pa.schema([OUTPUT_SCHEMA.field(column) for column in columns])
    tables = []
    for fmt, ext in (("parquet", ".parquet"), ("json", ".json")):
        found = [name for name in files if name.endswith(ext)]
        if found:
            tables.append(pads.dataset(found, format=fmt).to_table(columns=columns))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([table.cast(schema) for table in tables])


def list_files(path: str) -> List[str]:
    """The files under a folder or URI, recursively; none when it does not exist."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    prefix = path[: path.index("://") + 3] if "://" in path else ""
    return [prefix + info.path for info in infos if info.type == pafs.FileType.File]


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


def _maybe_crash(ids: Iterable[str]) -> None:
    """The test-only hook (CRASH_ENV): exit or raise on the batch with an id, once."""
    hooks = os.environ.get(CRASH_ENV)
    markers = os.environ.get(CRASH_MARKERS_ENV)
    if not hooks or not markers:
        return
    actions = dict(hook.rsplit("=", 1) for hook in hooks.split(","))
    for id_ in ids:
        marker = os.path.join(markers, hashlib.sha1(id_.encode()).hexdigest())
        if id_ not in actions or os.path.exists(marker):
            continue
        with open(marker, "w", encoding="utf-8") as file:
            file.write(str(os.getpid()))
        if actions[id_] == "exit":
            os._exit(1)
        raise RuntimeError(f"test hook: abort on {id_}")
