"""The onnxruntime backend of the model layer: the forward pass in ONNX Runtime on an ONNX
export (`backend = "onnxruntime"`, inference only).

Planning, batching, padding, decoding and annotation are the runtime's and the pipe's, as for
torch: this backend receives `encoding.collate`'s int64 arrays and returns float32 logits (and
the word states for `set_trf_data`). Its export comes from, in this order: the pipeline's own
saved export (`from_disk`, `from_bytes`), the `onnx_path` setting (a folder written by
`luke-spacy export-onnx`, e.g. int8), or the checkpoint, exported once on first use and
cached (`onnx_files.cache_dir`). Exporting and reading tokenizer files are the torch side's
(`source`, `read_files`), so this module imports neither torch nor the model module.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
from spacy.util import logger
from thinc.api import Model, get_current_ops

from .backend import Backend, Backprop, Inputs
from .checkpoint import remove_weights
from .errors import CheckpointError, error_line
from .onnx_files import (
    CACHE_ENV,
    GRAPH_NAME,
    MANIFEST_NAME,
    cache_dir,
    cache_key,
    check_export,
    check_graph_io,
    folder_fingerprint,
    is_export,
    local_checkpoint,
)
from .settings import NerSettings, SettingsError

EXTRA_MISSING = (
    "luke_ner: backend = 'onnxruntime' needs ONNX Runtime and onnx: "
    "pip install 'luke-spacy[onnx]'"
)
INFERENCE_ONLY = (
    "luke_ner: backend = 'onnxruntime' runs inference only; training runs in torch. Train "
    "with backend = 'torch' (the default), then run the trained pipeline with backend = "
    "'onnxruntime' (it is exported on first use) or export it with `luke-spacy export-onnx`."
)
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def require_onnxruntime() -> None:
    """Raise an ImportError naming the pip command when the `onnx` extra is not installed."""
    if find_spec("onnxruntime") is None or find_spec("onnx") is None:
        raise ImportError(EXTRA_MISSING)


@dataclass
class LoadedExport:
    """An export folder in use: its files, manifest, tokenizer and config."""

    folder: Path
    manifest: Dict[str, Any]
    tokenizer: Any
    config: Any


class OrtBackend:
    """The forward pass in ONNX Runtime (`backend.Backend`, inference only).

    model (Model): The Thinc model (its attrs name the checkpoint).
    source (Backend): The torch backend of the same model: it loads and exports checkpoints
        (needs `scorer`, `unload` and `set_folder` besides the Backend interface).
    read_files (Callable[[Path], Tuple[Any, Any]]): Reads the tokenizer and config of an
        export folder, with the checkpoint checks (`model.load_files`).
    """

    def __init__(
        self,
        model: Model,
        source: Backend,
        read_files: Callable[[Path], Tuple[Any, Any]],
    ) -> None:
        require_onnxruntime()
        self.model = model
        self.source = source
        self._read_files = read_files
        self._settings = NerSettings(backend="onnxruntime")
        self._loaded: Optional[LoadedExport] = None
        # Where the loaded export came from: "setting" (onnx_path), "cache" or "saved".
        self._origin: Optional[str] = None
        self._session: Any = None
        # The saved pipeline's model folder (`load_local`): a changed onnx_path is used, or
        # checked, with this folder's checkpoint, never the one in attrs it started from.
        self._local: Optional[Path] = None
        # The process that created the session: a forked child makes its own.
        self._pid: Optional[int] = None

    def __getstate__(self) -> Dict[str, Any]:
        # An ONNX Runtime session does not pickle: the export's files travel instead.
        state = {**self.__dict__, "_session": None, "_pid": None, "_loaded": None}
        state["_pickled"] = self.to_bytes() if self._loaded is not None else None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        pickled = state.pop("_pickled", None)
        self.__dict__.update(state)
        if pickled is not None:
            self.from_bytes(pickled)

    # -- Backend -------------------------------------------------------------------------------

    def configure(self, settings: NerSettings) -> None:
        providers(settings.device)  # refuses a device this onnxruntime cannot use
        if settings.onnx_path != self._settings.onnx_path and self._origin != "saved":
            self._loaded = self._session = None  # the export the setting names, on next use
        if settings.device != self._settings.device:
            self._session = None
        self._settings = settings

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def tokenizer(self) -> Any:
        return self._export().tokenizer

    @property
    def config(self) -> Any:
        return self._export().config

    @property
    def precision(self) -> str:
        """The loaded export's precision: "float32" or "int8"."""
        return self._export().manifest["precision"]

    @property
    def folder(self) -> Path:
        """The export folder in use."""
        return self._export().folder

    def load(self, labels: Optional[Sequence[str]] = None) -> None:
        if labels is not None:
            raise ValueError(INFERENCE_ONLY)
        self._export()

    def load_local(self, path: Union[str, Path]) -> None:
        """Load a saved pipeline's model folder: its own export, or (a pipeline saved with the
        torch backend) the export `onnx_path` names, checked to be of this checkpoint, or an
        export of its checkpoint made on first use."""
        path = Path(path)
        self._local = path
        # Switched to torch later, the pipeline's weights come from here, never the base
        # checkpoint named in attrs.
        self.source.set_folder(path)
        if is_export(path):
            self._open(path, "saved")
        elif self._settings.onnx_path is not None:
            self._open(Path(self._settings.onnx_path), "setting", folder_fingerprint(path))
        else:
            self._export_checkpoint(str(path), path, lambda: self.source.load_local(path))

    def save(self, path: Union[str, Path]) -> None:
        """Write the export's files (graph, manifest, config, tokenizer) into the folder, and
        delete torch weights left there by an earlier save with backend = 'torch'."""
        export = self._export()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if path.resolve() == export.folder.resolve():
            return
        remove_weights(path)
        for file in _files(export.folder):
            shutil.copyfile(file, path / file.name)

    def to_bytes(self) -> bytes:
        files = {file.name: file.read_bytes() for file in _files(self._export().folder)}
        return srsly.msgpack_dumps({"onnx_export": files})

    def from_bytes(self, data: bytes) -> None:
        files = srsly.msgpack_loads(data).get("onnx_export")
        if not isinstance(files, dict) or MANIFEST_NAME not in files:
            raise CheckpointError(
                "These bytes hold no ONNX export (a pipeline serialized with backend = "
                "'torch'?); load them with backend = 'torch'."
            )
        odd = sorted(repr(name) for name in files if not _plain_name(name))
        if odd or not all(isinstance(content, bytes) for content in files.values()):
            raise CheckpointError(
                f"These bytes are not an ONNX export of luke-spacy: file names that are not "
                f"plain names ({', '.join(odd[:3]) or 'none'}) or contents that are not bytes."
            )
        # Keyed on every file, so that two exports of one graph with other tokenizer or
        # config files never share a folder.
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        target = cache_dir() / cache_key("bytes:sha256:" + digest.hexdigest())
        self._local = None
        with _cache_lock(target):
            manifest = _sound_export(target)
            if manifest is None:
                tmp = _temporary(target)
                try:
                    for name, content in files.items():
                        (tmp / name).write_bytes(content)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                _publish(tmp, target)
        self._open(target, "saved", manifest=manifest)

    def predict(
        self, inputs: Inputs, want_words: bool
    ) -> Tuple[numpy.ndarray, Optional[numpy.ndarray]]:
        session = self._current_session()
        outputs = ["logits", "word_states"] if want_words else ["logits"]
        result = session.run(outputs, inputs)
        return result[0], (result[1] if want_words else None)

    def begin_update(
        self, inputs: Inputs, drop: Optional[float]
    ) -> Tuple[numpy.ndarray, Backprop]:
        raise ValueError(INFERENCE_ONLY)

    def begin_update_words(
        self, inputs: Inputs, drop: Optional[float]
    ) -> Tuple[numpy.ndarray, Backprop]:
        raise ValueError(INFERENCE_ONLY)

    # -- loading -------------------------------------------------------------------------------

    def _export(self) -> LoadedExport:
        """The loaded export, loading the one the settings name on first use."""
        if self._loaded is None:
            onnx_path = self._settings.onnx_path
            name, revision = self.model.attrs["name"], self.model.attrs["revision"]
            if self._local is not None:
                self.load_local(self._local)
            elif onnx_path is not None:
                # The checkpoint named beside it is checked where its files are at hand: a
                # local folder, or a hub id in the Hugging Face cache.
                folder = local_checkpoint(name, revision)
                expected = folder_fingerprint(folder) if folder is not None else None
                self._open(Path(onnx_path), "setting", expected)
            else:
                folder = local_checkpoint(name, revision)
                self._export_checkpoint(name, folder, self.source.load, revision)
        assert self._loaded is not None
        return self._loaded

    def _export_checkpoint(
        self,
        name: str,
        folder: Optional[Path],
        load: Callable[[], None],
        revision: Optional[str] = None,
    ) -> None:
        """Open the cached export of a checkpoint, exporting it first if there is none. Torch
        weights loaded here (to fingerprint or export the checkpoint) are dropped again, so
        that they do not stay in memory next to ONNX Runtime's."""
        source = self.source
        in_memory = source.is_loaded  # weights that may differ from any file (trained here)
        try:
            target, fingerprint = self._cache_target(name, folder, load, revision)
            with _cache_lock(target):
                manifest = _sound_export(target)
                if manifest is None:
                    self._write_cache(name, target, fingerprint, load)
        finally:
            if not in_memory:
                source.unload()
        self._open(target, "cache", manifest=manifest)

    def _cache_target(
        self,
        name: str,
        folder: Optional[Path],
        load: Callable[[], None],
        revision: Optional[str],
    ) -> Tuple[Path, str]:
        """The cache folder of the checkpoint's export and the checkpoint's fingerprint."""
        source = self.source
        in_memory = source.is_loaded
        if folder is None and not in_memory:
            load()  # a hub id not in the local cache yet: download it
            folder = local_checkpoint(name, revision or "main")
        if in_memory or folder is None:
            from .onnx_graph import state_fingerprint

            fingerprint = state_fingerprint(source.scorer, source.tokenizer)
        else:
            fingerprint = folder_fingerprint(folder)
        return cache_dir() / cache_key(fingerprint), fingerprint

    def _write_cache(
        self, name: str, target: Path, fingerprint: str, load: Callable[[], None]
    ) -> None:
        """Export the checkpoint into the cache folder `target`."""
        from .onnx_graph import write_export

        source = self.source
        logger.warning(
            "luke_ner: exporting '%s' to ONNX for backend = 'onnxruntime', once per checkpoint "
            "(about 2 minutes for LUKE-large on 2 CPU cores, seconds for small models); cached "
            "in %s (set %s to move the cache).",
            name,
            target,
            CACHE_ENV,
        )
        start = time.perf_counter()
        if not source.is_loaded:
            load()
        tmp = _temporary(target)
        try:
            write_export(
                source.scorer,
                source.tokenizer,
                tmp,
                source={"name": name, "fingerprint": fingerprint},
            )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(tmp, target)
        size = sum(file.stat().st_size for file in _files(target))
        logger.warning(
            "luke_ner: exported '%s' to ONNX in %.0f s (%.0f MB) into %s.",
            name,
            time.perf_counter() - start,
            size / 1e6,
            target,
        )

    def _open(
        self,
        folder: Path,
        origin: str,
        expected_source: Optional[str] = None,
        manifest: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Check an export folder (unless its checked `manifest` is given), read its tokenizer
        and config and start its session."""
        if manifest is None:
            manifest = check_export(folder, expected_source)
        tokenizer, config = self._read_files(folder)
        loaded = LoadedExport(folder, manifest, tokenizer, config)
        session = self._new_session(loaded)
        self._loaded, self._origin, self._session = loaded, origin, session
        self._pid = os.getpid()

    # -- sessions ------------------------------------------------------------------------------

    def _current_session(self) -> Any:
        export = self._export()
        if self._session is None or self._pid != os.getpid():
            # A forked child inherits ONNX Runtime's thread pool without its threads: it
            # makes its own session, with one thread (as the torch backend does).
            forked = self._pid is not None and self._pid != os.getpid()
            self._session = self._new_session(export, threads=1 if forked else None)
            self._pid = os.getpid()
        return self._session

    def _new_session(self, export: LoadedExport, threads: Optional[int] = None) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is None:
            threads = _env_threads()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        file = export.folder / GRAPH_NAME
        try:
            session = onnxruntime.InferenceSession(
                str(file), options, providers=providers(self._settings.device)
            )
        except _graph_errors() as err:  # a graph ONNX Runtime cannot read, not a GPU failure
            raise CheckpointError(
                f"ONNX Runtime cannot load '{file}' ({error_line(err, with_type=True)}); "
                "export the checkpoint again."
            ) from err
        check_graph_io(
            file,
            [i.name for i in session.get_inputs()],
            [(o.name, o.shape) for o in session.get_outputs()],
            export.manifest["labels"],
        )
        return session


def providers(device: Optional[str]) -> List[Any]:
    """ONNX Runtime's execution providers for the `device` setting: the CPU, or CUDA (with
    the CPU for what CUDA does not run) for a GPU device, or for device = None when spaCy
    runs on a GPU (`spacy.require_gpu`) and onnxruntime-gpu is installed.

    RAISES (SettingsError): A GPU is asked for and this onnxruntime has no CUDA provider, or the
        device is neither a CPU nor a CUDA device.
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device is None:
        ops = get_current_ops()
        if type(ops).__name__ != "CupyOps":
            return [CPU_PROVIDER]
        if CUDA_PROVIDER not in available:
            logger.warning(
                "luke_ner: spaCy runs on a GPU, but this onnxruntime has no CUDA provider "
                "(pip install onnxruntime-gpu); backend = 'onnxruntime' runs on the CPU."
            )
            return [CPU_PROVIDER]
        return [(CUDA_PROVIDER, {"device_id": int(getattr(ops, "device_id", 0))}), CPU_PROVIDER]
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return [CPU_PROVIDER]
    if kind != "cuda" or (index and not index.isdigit()):
        raise SettingsError(
            [
                (
                    "device",
                    f"{device!r} cannot be used with backend = 'onnxruntime'; use null, 'cpu' "
                    "or 'cuda:0'",
                )
            ]
        )
    if CUDA_PROVIDER not in available:
        raise SettingsError(
            [
                (
                    "device",
                    f"{device!r} with backend = 'onnxruntime' needs ONNX Runtime's CUDA "
                    "provider: pip install onnxruntime-gpu (this onnxruntime offers "
                    f"{available})",
                )
            ]
        )
    return [(CUDA_PROVIDER, {"device_id": int(index or 0)}), CPU_PROVIDER]


@contextmanager
def _cache_lock(target: Path) -> Iterator[None]:
    """Hold the lock of a cache entry while it is checked, repaired or written: one process
    at a time, so that `nlp.pipe(n_process=N)` workers started before the parent used the
    pipeline do not all export LUKE-large at once, and a repair never deletes an entry that
    another process has just published."""
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning(
            "luke_ner: waiting for another process writing the ONNX export %s.", target
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _sound_export(target: Path) -> Optional[Dict[str, Any]]:
    """The checked manifest of a cache entry; None when there is none, or when it is damaged
    (then it is deleted, to be written again). Only the export's own check repairs the cache:
    a tokenizer that cannot be read or a session that cannot start (a GPU, memory) would fail
    again after exporting."""
    if not is_export(target):
        return None
    try:
        return check_export(target)
    except CheckpointError as err:
        logger.warning(
            "luke_ner: the cached ONNX export %s is damaged (%s); writing it again.",
            target,
            error_line(err),
        )
        shutil.rmtree(target, ignore_errors=True)
        return None


def _plain_name(name: Any) -> bool:
    """Whether a file name from bytes names a file in its folder (no path, no `..`)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _graph_errors() -> Tuple[type, ...]:
    """ONNX Runtime's exception types for a graph file it cannot read."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile, state.Fail)


def _env_threads() -> Optional[int]:
    """OMP_NUM_THREADS when set (torch follows it too), else None: ONNX Runtime's default."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _files(folder: Path) -> List[Path]:
    """The files of an export folder (not the temporary ones of a write in progress)."""
    return sorted(f for f in Path(folder).iterdir() if f.is_file() and not f.name.startswith("."))


def _temporary(target: Path) -> Path:
    """A new folder beside `target` to write it in, so that it appears whole or not at all."""
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, target: Path) -> None:
    """Rename the written folder into place; when another process was first, keep its."""
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_export(target):
            raise
