"""The LUKE span classifier in torch: checkpoint loading, the Thinc shim, the torch backend
of the model layer, and the `luke_spacy.LukeSpanClassifier.v1` architecture."""

from __future__ import annotations

import functools
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
import torch
from spacy.util import registry
from spacy_transformers.data_classes import HFObjects
from spacy_transformers.layers.hf_shim import HFShim
from spacy_transformers.util import make_tempdir
from thinc.api import (
    ArgsKwargs,
    Model,
    PyTorchGradScaler,
    get_torch_default_device,
    torch2xp,
    xp2torch,
)
from transformers import AutoConfig, AutoTokenizer, LukeConfig, LukeForEntitySpanClassification

from .attention import fuse_entity_aware_attention, unfuse_entity_aware_attention
from .backend import Backend, BackendChoice, Backprop, Inputs
from .checkpoint import (
    NO_ENTITY_LABELS,
    SPAN_CLASSIFIER,
    CheckpointError,
    check_folder,
    check_loaded_keys,
    check_tokenizer_files,
    check_weight_shapes,
    labels_from_id2label,
    missing_local_folder,
    read_config,
    read_json,
    save_tokenizer_settings,
    tokenizer_settings,
    verify_tokenizer_settings,
    weights_file,
)
from .errors import error_line
from .onnx_files import remove_export
from .runtime import build_span_model
from .settings import NerSettings, SettingsError
from .tokenization import entity_ids

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Name of label 0 in a freshly initialized head, as in LUKE's own NER code.
NO_ENTITY = "NIL"


class LukeSpanScorer(torch.nn.Module):
    """`LukeForEntitySpanClassification` with a forward that can also return word states.

    The head is the checkpoint's own: `classifier(cat(h[start], h[end], h_entity))`.
    """

    def __init__(self, hf_model: LukeForEntitySpanClassification) -> None:
        super().__init__()
        self.hf = hf_model

    def forward(
        self, batch: Dict[str, torch.Tensor], return_words: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        hf = self.hf
        out = hf.luke(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            entity_ids=batch["entity_ids"],
            entity_attention_mask=batch["entity_attention_mask"],
            entity_position_ids=batch["entity_position_ids"],
            return_dict=True,
        )
        words = out.last_hidden_state
        width = words.size(-1)
        starts = batch["entity_start_positions"].unsqueeze(-1).expand(-1, -1, width)
        ends = batch["entity_end_positions"].unsqueeze(-1).expand(-1, -1, width)
        features = torch.cat(
            [words.gather(-2, starts), words.gather(-2, ends), out.entity_last_hidden_state],
            dim=2,
        )
        logits = hf.classifier(hf.dropout(features))
        return logits, (words if return_words else None)


class LukeShim(HFShim):
    """HFShim for the span classifier, serialized as safetensors plus tokenizer files.

    spacy-transformers' shim brings the PyTorch/Thinc plumbing (optimizer ids, devices,
    `use_params`); the serialization differs, so the weights never go through pickle, and so
    does the training step under mixed precision (see `begin_update`), whose switch and
    gradient scaler this shim owns (`mixed_precision`, `grad_scaler`).
    """

    _warned_cpu = False
    # Whether the parameter gradients are scaled by the grad scaler (until finish_update).
    _scaled = False
    # Autocast dtype of inference; float32 runs without autocast (exact).
    inference_dtype = torch.float32

    def __init__(
        self,
        objects: HFObjects,
        *,
        mixed_precision: bool = False,
        grad_scaler_config: Optional[Dict[str, Any]] = None,
    ) -> None:
        config = dict(grad_scaler_config or {})
        # Gradient scaling is on with mixed precision unless the config switches it off.
        config.setdefault("enabled", mixed_precision)
        super().__init__(
            objects,
            mixed_precision=mixed_precision,
            grad_scaler_config=dict(config),
            model_cls=LukeForEntitySpanClassification,
        )
        self.mixed_precision = mixed_precision
        self.grad_scaler = PyTorchGradScaler(**config)
        self.grad_scaler.to_(get_torch_default_device())

    def predict(self, inputs: ArgsKwargs):
        """Forward for inference: eval mode, no autograd, autocast to `inference_dtype`.

        Unlike thinc's PyTorchShim.predict, the module is left in eval mode afterwards, and
        inference_mode (not only no_grad) saves the version-counter bookkeeping.
        """
        self._model.eval()
        device_type = next(self._model.parameters()).device.type
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type,
                dtype=self.inference_dtype,
                enabled=self.inference_dtype != torch.float32,
            ),
        ):
            return self._model(*inputs.args, **inputs.kwargs)

    def begin_update(self, inputs: ArgsKwargs):
        """Forward for training; the gradients accumulate until `finish_update`.

        thinc's PyTorchShim unscales all parameter gradients after every backward, which
        divides the ones accumulated before (other forward batches of the update, other
        sub-batches of `accumulate_gradient`) by the scale again. Here scaled gradients
        accumulate and `finish_update` unscales them once, as torch's GradScaler does. On a
        CPU mixed precision is switched off with a warning: thinc's scaler and CUDA autocast
        need a GPU.
        """
        self._model.train()
        mixed = self._mixed_precision_on()
        with torch.autocast("cuda", enabled=mixed):
            output = self._model(*inputs.args, **inputs.kwargs)

        def backprop(grads: ArgsKwargs) -> ArgsKwargs:
            if mixed:
                grads.kwargs["grad_tensors"] = self.grad_scaler.scale(
                    grads.kwargs["grad_tensors"], inplace=True
                )
                self._scaled = True
            torch.autograd.backward(*grads.args, **grads.kwargs)
            return inputs  # token and span ids: nothing to differentiate

        return output, backprop

    def finish_update(self, optimizer) -> None:
        """Unscale the accumulated gradients once, then step (skipped on overflow)."""
        scaler = self.grad_scaler
        if self._scaled:
            grads = [p.grad for p in self._model.parameters() if p.grad is not None]
            # Sets found_inf, so the step is skipped and the scale backs off on overflow.
            scaler.unscale(grads)
            self._scaled = False
        for name, param in self._model.named_parameters():
            if param.grad is None:
                continue
            if not scaler.found_inf:
                value, _ = optimizer((self.id, name), torch2xp(param.data), torch2xp(param.grad))
                param.data = xp2torch(value, requires_grad=True, device=param.device)
            param.grad.zero_()
        scaler.update()

    def _mixed_precision_on(self) -> bool:
        if not self.mixed_precision:
            return False
        if self.device.type == "cuda":
            return True
        if not self._warned_cpu:
            warnings.warn(
                "luke_ner: model.mixed_precision needs a CUDA device; training on "
                f"{self.device.type} in float32 without gradient scaling.",
                stacklevel=2,
            )
            self._warned_cpu = True
        return False

    def to_bytes(self) -> bytes:
        with make_tempdir() as tmp:
            save_checkpoint(self._hfmodel, tmp)
            files = {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}
        return srsly.msgpack_dumps({"files": files})

    def from_bytes(self, bytes_data: bytes) -> LukeShim:
        files = srsly.msgpack_loads(bytes_data)["files"]
        with make_tempdir() as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            self.set_objects(load_checkpoint(str(tmp), local_files_only=True))
        return self

    def set_objects(self, objects: HFObjects) -> None:
        self._hfmodel = objects
        self._model = LukeSpanScorer(objects.transformer)


@registry.architectures("luke_spacy.LukeSpanClassifier.v1")
def build_luke_span_classifier(
    name: str = "studio-ousia/luke-large-finetuned-conll-2003",
    revision: str = "main",
    mixed_precision: bool = False,
    grad_scaler_config: Dict[str, Any] = {},  # noqa: B006 (config default, never mutated)
) -> Model:
    """luke_ner's Thinc model over Docs, with the torch backend on a
    `LukeForEntitySpanClassification` checkpoint.

    The checkpoint is loaded on first use, not here, so that building a pipeline reads
    nothing and `spacy.load` of a saved pipeline never looks the hub up before its own
    weights are read from disk.

    name (str): Hugging Face hub id or local folder of the checkpoint.
    revision (str): Hub revision (branch, tag or commit).
    mixed_precision (bool): Train with autocast (GPU).
    grad_scaler_config (dict): Settings of the gradient scaler used with mixed precision.
    RETURNS (Model): Docs in, each sentence's scored candidate spans out (`runtime.forward`).
    """
    shim = LukeShim(
        HFObjects(None, None, None, {"name": name, "revision": revision}, {}),
        mixed_precision=mixed_precision,
        grad_scaler_config=grad_scaler_config,
    )
    return build_span_model(make_backends, attrs={"name": name, "revision": revision}, shims=[shim])


def make_backends(model: Model) -> BackendChoice:
    """The backends of the span classifier: "torch" (the shim's checkpoint) and
    "onnxruntime" (built when chosen; it exports from, or reads files with, the torch side)."""
    torch_backend = TorchBackend(model)
    return BackendChoice(
        {"torch": torch_backend},
        {"onnxruntime": functools.partial(_onnxruntime_backend, model, torch_backend)},
    )


def _onnxruntime_backend(model: Model, torch_backend: TorchBackend) -> Backend:
    from .onnx_backend import OrtBackend

    return OrtBackend(model, source=torch_backend, read_files=load_files)


class TorchBackend:
    """The forward pass in torch on the checkpoint that the model's shim holds.

    The torch side of the model layer (`backend.Backend`): loading on first use, device
    placement, autocast for inference, the attention implementation, dropout, and torch's
    threads after a fork.

    model (Model): The Thinc model whose `LukeShim` holds the checkpoint.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._device: Optional[str] = None
        self._dtype = "float32"
        self._attention = "sdpa"
        # The loaded objects the dtype, attention and dropout were applied to.
        self._prepared: Optional[HFObjects] = None
        self._dropout: Optional[float] = None
        # The process that last ran torch here; a fork since then needs one thread.
        self._pid: Optional[int] = None
        # The saved pipeline's model folder the weights come from (`load_local`), not the
        # checkpoint named in attrs, which is the untrained one the pipeline started from.
        self._folder: Optional[Path] = None

    def __getstate__(self) -> Dict[str, object]:
        # A pickled backend (spawn, or a pipeline pickled to disk) runs in a fresh process,
        # not a fork: it must not inherit the guard's record of who ran torch.
        return {**self.__dict__, "_pid": None}

    def configure(self, settings: NerSettings) -> None:
        check_device(settings.device)
        if (settings.dtype, settings.attention) != (self._dtype, self._attention):
            self._prepared = None  # applied again on next use
        self._device, self._dtype, self._attention = (
            settings.device,
            settings.dtype,
            settings.attention,
        )

    @property
    def is_loaded(self) -> bool:
        return get_objects(self.model) is not None

    @property
    def tokenizer(self) -> Any:
        return self._objects().tokenizer

    @property
    def config(self) -> Any:
        return self._objects().transformer.config

    @property
    def scorer(self) -> LukeSpanScorer:
        """The torch module of the forward pass (what an ONNX export traces)."""
        self._objects()
        return get_scorer(self.model)

    def unload(self) -> None:
        """Drop the loaded checkpoint (after an export, so its weights do not stay in memory
        next to ONNX Runtime's); the next use loads it again, from the saved pipeline's folder
        when it came from one (`set_folder`)."""
        shim = self._shim
        shim._hfmodel = HFObjects(None, None, None, dict(shim._hfmodel._init_tokenizer_config), {})
        shim._model = None
        self._prepared = None

    def load(self, labels: Optional[Sequence[str]] = None) -> None:
        if labels is not None:
            self._folder = None  # a new head on the starting checkpoint, for training
            load_weights(self.model, labels=labels)
        self._objects()

    def set_folder(self, path: Union[str, Path]) -> None:
        """Name the saved pipeline's model folder that the weights are loaded from on first
        use (a pipeline loaded with another backend), instead of the checkpoint in attrs."""
        self._folder = Path(path)

    def load_local(self, path: Union[str, Path]) -> None:
        self.set_folder(path)
        set_objects(self.model, load_checkpoint(str(path), local_files_only=True))
        self._objects()

    def save(self, path: Union[str, Path]) -> None:
        """Write the checkpoint into the folder, and delete an ONNX export left there by an
        earlier save with backend = 'onnxruntime' (which that backend would run instead)."""
        objects = self._objects()
        remove_export(Path(path))
        save_checkpoint(objects, Path(path))

    def to_bytes(self) -> bytes:
        self._objects()
        return self.model.to_bytes()

    def from_bytes(self, data: bytes) -> None:
        self.model.from_bytes(data)
        self._folder = None
        self._objects()

    def predict(
        self, inputs: Inputs, want_words: bool
    ) -> Tuple[numpy.ndarray, Optional[numpy.ndarray]]:
        if self._pid is not None and self._pid != os.getpid():
            # A forked child inherits libgomp's thread pool in a state that hangs its next
            # parallel region; one thread runs without the pool (as OMP_NUM_THREADS=1 does).
            torch.set_num_threads(1)
        self._pid = os.getpid()
        device = self._place()
        if self._dtype == "float16" and device.type == "cpu":
            raise ValueError("dtype = 'float16' needs a GPU; use 'bfloat16' or 'float32' on CPU.")
        logits, words = self._shim.predict(_arguments(inputs, device, want_words))
        return (
            logits.float().cpu().numpy(),
            words.float().cpu().numpy() if words is not None else None,
        )

    def begin_update(
        self, inputs: Inputs, drop: Optional[float]
    ) -> Tuple[numpy.ndarray, Backprop]:
        return self._begin_update(inputs, drop, words=False)

    def begin_update_words(
        self, inputs: Inputs, drop: Optional[float]
    ) -> Tuple[numpy.ndarray, Backprop]:
        return self._begin_update(inputs, drop, words=True)

    def _begin_update(
        self, inputs: Inputs, drop: Optional[float], *, words: bool
    ) -> Tuple[numpy.ndarray, Backprop]:
        """The training forward; returns the logits, or with `words` the word states."""
        device = self._place()
        self._set_dropout(drop)
        outputs, torch_backprop = self._shim.begin_update(_arguments(inputs, device, words))
        output = outputs[1] if words else outputs[0]

        def backprop(d_output: numpy.ndarray) -> None:
            grad = torch.from_numpy(d_output).to(device=output.device, dtype=output.dtype)
            torch_backprop(ArgsKwargs(args=(output,), kwargs={"grad_tensors": (grad,)}))

        return output.detach().float().cpu().numpy(), backprop

    @property
    def _shim(self) -> LukeShim:
        return self.model.shims[0]

    def _objects(self) -> HFObjects:
        """The loaded tokenizer and transformer, loading the checkpoint on first use."""
        objects = get_objects(self.model)
        if objects is None and self._folder is not None:
            objects = self._load_folder(self._folder)
        elif objects is None:
            objects = load_weights(self.model)
        if objects is not self._prepared:
            if self._attention == "sdpa":
                fuse_entity_aware_attention(objects.transformer)
            else:
                unfuse_entity_aware_attention(objects.transformer)
            self._shim.inference_dtype = DTYPES[self._dtype]
            self._dropout = None  # new modules have the checkpoint's rates
            self._prepared = objects
        return objects

    def _load_folder(self, folder: Path) -> HFObjects:
        """The weights of the saved pipeline folder this model was loaded from."""
        if weights_file(folder) is None:
            raise CheckpointError(
                f"luke_ner: backend = 'torch' needs the trained torch weights, but the pipeline "
                f"was loaded from '{folder}', which holds an ONNX export only (saved with "
                "backend = 'onnxruntime'); load a copy of the pipeline saved with backend = "
                "'torch' instead."
            )
        objects = load_checkpoint(str(folder), local_files_only=True)
        set_objects(self.model, objects)
        return objects

    def _place(self) -> torch.device:
        """Move the model to the configured device (or thinc's current one); return it."""
        if self._device is not None:
            device = torch.device(self._device)
        else:
            device = get_torch_default_device()
        self._objects()
        scorer = get_scorer(self.model)
        if next(scorer.parameters()).device != device:
            scorer.to(device)
        return device

    def _set_dropout(self, rate: Optional[float]) -> None:
        """Give every dropout of the network the rate thinc's `set_dropout_rate` set."""
        if rate is None or rate == self._dropout:
            return
        for module in get_scorer(self.model).modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = rate
        self._dropout = rate


def _arguments(inputs: Inputs, device: torch.device, want_words: bool) -> ArgsKwargs:
    """The scorer's arguments: the collated arrays as tensors on the device."""
    batch = {key: torch.from_numpy(value).to(device) for key, value in inputs.items()}
    return ArgsKwargs(args=(batch,), kwargs={"return_words": want_words})


def get_objects(model: Model) -> Optional[HFObjects]:
    """The loaded tokenizer and transformer of a span classifier model, or None."""
    objects = model.shims[0]._hfmodel
    return objects if objects.transformer is not None else None


def get_scorer(model: Model) -> LukeSpanScorer:
    """The torch module that computes span logits."""
    return model.shims[0]._model


def set_objects(model: Model, objects: HFObjects) -> None:
    """Put a loaded tokenizer and span classifier into the model."""
    model.shims[0].set_objects(objects)


def load_weights(model: Model, labels: Optional[Sequence[str]] = None) -> HFObjects:
    """Load the model's checkpoint (hub id, local folder or HF cache).

    Without `labels` an already loaded checkpoint is kept; with them the starting checkpoint
    is (re)loaded with a head for exactly those labels, for training.
    """
    objects = get_objects(model)
    if objects is None or labels is not None:
        objects = load_checkpoint(
            model.attrs["name"], revision=model.attrs["revision"], labels=labels
        )
        set_objects(model, objects)
    return objects


def load_checkpoint(
    name: str,
    *,
    revision: str = "main",
    local_files_only: bool = False,
    labels: Optional[Sequence[str]] = None,
) -> HFObjects:
    """Load tokenizer and span classifier of a checkpoint, with errors that say the fix.

    name (str): Hub id or local folder.
    revision (str): Hub revision, ignored for local folders.
    local_files_only (bool): Never touch the network.
    labels (Optional[Sequence[str]]): Entity labels to train. The checkpoint's head is kept
        when it has exactly these labels; otherwise a fresh head is initialized (also for
        pretrained-only checkpoints such as studio-ousia/luke-base).
    RETURNS (HFObjects): The tokenizer and `LukeForEntitySpanClassification`.
    """
    is_local = os.path.isdir(name)
    missing = missing_local_folder(name)
    if missing is not None:
        raise CheckpointError(missing)
    if is_local:
        read_config(Path(name))  # a missing config.json, named
    kwargs: Dict[str, Any] = {"local_files_only": local_files_only or is_local}
    if not is_local:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointError(_load_failure(name, err)) from err
    check_config(name, config, require_head=labels is None)
    has_head = SPAN_CLASSIFIER in (config.architectures or [])
    head_kwargs: Dict[str, Any] = {}
    if labels is not None:
        current = (
            labels_from_id2label(config.id2label, repr(name), no_entity_first=False)
            if has_head
            else []
        )
        no_entity = current[0] if current and current[0] in NO_ENTITY_LABELS else None
        if not (no_entity and set(current[1:]) == set(labels)):
            ordered = [no_entity or NO_ENTITY, *sorted(labels)]
            config.id2label = dict(enumerate(ordered))
            config.label2id = {label: i for i, label in enumerate(ordered)}
            head_kwargs["ignore_mismatched_sizes"] = True
        config.architectures = [SPAN_CLASSIFIER]
    if is_local:
        # transformers hides the cause of an incomplete folder: check its files first.
        shapes = check_folder(Path(name))
        check_weight_shapes(Path(name), shapes, config, head=labels is None)
    tokenizer = _load_tokenizer(name, kwargs, is_local)
    try:
        hf_model, loading_info = LukeForEntitySpanClassification.from_pretrained(
            name, config=config, output_loading_info=True, **kwargs, **head_kwargs
        )
    except (OSError, ValueError) as err:
        raise CheckpointError(_load_failure(name, err)) from err
    except RuntimeError as err:  # e.g. a size mismatch in weights that are not safetensors
        raise CheckpointError(
            f"The weights of '{name}' do not match its config.json "
            f"({error_line(err, with_type=True)})."
        ) from err
    if has_head:
        # transformers fills tensors the weights lack with random values and drops the ones
        # the config has no place for, and says so only in a log (which loading lowers).
        # A pretrained-only checkpoint gets its new head here, as it should.
        weights = weights_file(Path(name)) if is_local else None
        check_loaded_keys(
            f"'{weights}'" if weights is not None else f"of '{name}'",
            loading_info["missing_keys"],
            [*loading_info["unexpected_keys"], *_keys(loading_info.get("mismatched_keys", ()))],
            new_head=bool(head_kwargs),
        )
    hf_model.eval()
    return HFObjects(tokenizer, hf_model, None, {"name": name, "revision": revision}, {})


def _load_tokenizer(name: str, kwargs: Dict[str, Any], is_local: bool) -> Any:
    """The checkpoint's tokenizer, checked against the settings it was saved with."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as err:  # any cause: transformers reports many as a missing package
        raise CheckpointError(_tokenizer_failure(name, is_local, err)) from err
    ids = entity_ids(tokenizer, name)
    if is_local:
        verify_tokenizer_settings(Path(name), tokenizer_settings(tokenizer, ids))
    return tokenizer


def load_files(path: Union[str, Path]) -> Tuple[Any, Any]:
    """The tokenizer and config of a folder without weights (an ONNX export), checked as a
    checkpoint folder's are.

    path (Union[str, Path]): The folder.
    RETURNS (Tuple[Any, LukeConfig]): The tokenizer and the config.
    """
    name = str(path)
    read_config(Path(name))  # a missing config.json, named
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(_load_failure(name, err)) from err
    check_config(name, config)
    check_tokenizer_files(Path(name))
    return _load_tokenizer(name, {"local_files_only": True}, True), config


def check_config(name: str, config: Any, *, require_head: bool = True) -> None:
    """Raise a CheckpointError unless the config is a LUKE span classifier."""
    if not isinstance(config, LukeConfig):
        raise CheckpointError(
            f"'{name}' is a '{config.model_type}' checkpoint, not LUKE. luke_ner needs a "
            f"{SPAN_CLASSIFIER} checkpoint such as "
            "'studio-ousia/luke-large-finetuned-conll-2003'."
        )
    architectures = config.architectures or []
    if require_head and SPAN_CLASSIFIER not in architectures:
        raise CheckpointError(
            f"'{name}' is not a span classifier (architectures: {architectures}). Use a "
            f"{SPAN_CLASSIFIER} checkpoint such as "
            "'studio-ousia/luke-large-finetuned-conll-2003', or fine-tune this one with "
            "`spacy train` first."
        )
    if require_head:
        labels = labels_from_id2label(config.id2label, f"the config.json of '{name}'")
        if len(labels) < 2:
            raise CheckpointError(f"'{name}' has fewer than two labels in config.id2label.")


def save_checkpoint(objects: HFObjects, path: Path) -> None:
    """Write config, safetensors weights and tokenizer files into a folder.

    Every writer of checkpoints (`nlp.to_disk`, `spacy assemble`, `spacy package`,
    `luke-spacy random-model`) comes through here, so the weights get the permissions of any
    new file: safetensors writes them through a private temporary file (mode 0600), which a
    pipeline shared with other users, or Ray workers under another account, could not read.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    objects.transformer.save_pretrained(str(path), safe_serialization=True)
    mode = _new_file_mode(path)
    for weights in path.glob("*.safetensors"):
        os.chmod(weights, mode)
    objects.tokenizer.save_pretrained(str(path))
    # The tokenizer settings are part of the pipeline: loading refuses files that disagree.
    save_tokenizer_settings(
        path, tokenizer_settings(objects.tokenizer, entity_ids(objects.tokenizer))
    )


def _new_file_mode(folder: Path) -> int:
    """The permissions a new file in `folder` gets (0o666 less the umask, or what the folder's
    default ACL gives), found by creating one: reading the umask means setting it, for every
    thread of the process, for a moment."""
    probe = folder / f".luke_spacy-mode-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)


def _load_failure(name: str, err: Exception) -> str:
    """The message of a checkpoint that could not be found: the fix first, then the cause."""
    if os.path.isdir(name):
        return f"Could not load the checkpoint folder '{name}' ({error_line(err, with_type=True)})."
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    cause = (
        "the Hugging Face hub is switched off (HF_HUB_OFFLINE=1) and the checkpoint is not in "
        "the local cache"
        if offline
        else "neither the hub nor the local cache had it"
    )
    return (
        f"Could not load the LUKE checkpoint '{name}'. Fix: point the model at a local folder "
        "that holds config.json, the weights and the tokenizer files (command line: "
        "--model /path/to/folder; Python: nlp.add_pipe('luke_ner', config={'model': "
        "{'name': '/path/to/folder'}}); config: [components.luke_ner.model] name = "
        '"/path/to/folder"), or for a smoke run with random weights write one with '
        f"`luke-spacy random-model /path/to/folder`. Cause: {cause} "
        f"({error_line(err, with_type=True)})."
    )


def _tokenizer_failure(name: str, is_local: bool, err: Exception) -> str:
    """The message of a tokenizer that could not be loaded, naming the broken file."""
    if is_local:
        entity_vocab = Path(name) / "entity_vocab.json"
        if entity_vocab.is_file() and "[MASK]" not in read_json(entity_vocab, "entities"):
            return (
                f"The entity vocabulary '{entity_vocab}' has no [MASK] entry; luke_ner needs "
                "the checkpoint's own entity_vocab.json."
            )
        return (
            f"Could not load the tokenizer of the checkpoint folder '{name}' "
            f"({error_line(err, with_type=True)}); check its tokenizer files "
            "(tokenizer_config.json, the vocabulary, entity_vocab.json)."
        )
    return _load_failure(name, err)


def _keys(entries: Iterable[Any]) -> List[str]:
    """The keys of transformers' mismatched_keys (older versions give (key, shape, shape))."""
    return [entry if isinstance(entry, str) else entry[0] for entry in entries]


def check_device(device: Optional[str]) -> None:
    """Raise a SettingsError (a ValueError) that says what is missing when a torch device
    cannot be used.

    device (Optional[str]): A torch device name ("cpu", "cuda", "cuda:1", "mps"), or None
        (follow spaCy's current device).
    """
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SettingsError(
            [("device", f"{device!r} is not a torch device; use null, 'cpu' or 'cuda:0'")]
        ) from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                why = (
                    f"this torch ({torch.__version__}) is a CPU build; install a CUDA build of "
                    "torch (https://pytorch.org/get-started/locally/)"
                )
            else:
                why = (
                    f"torch (CUDA {torch.version.cuda}) sees no GPU; check the NVIDIA driver "
                    "and CUDA_VISIBLE_DEVICES"
                )
            raise SettingsError([("device", f"{device!r} cannot be used: {why}")])
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise SettingsError(
                [
                    (
                        "device",
                        f"{device!r} cannot be used: torch sees {count} GPU(s), "
                        f"cuda:0 to cuda:{count - 1}",
                    )
                ]
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError([("device", f"{device!r} cannot be used: MPS is not available")])
