"""Load a pipeline with luke_ner for annotation: a saved pipeline, or a blank one + a checkpoint.

The command line and the distributed engine load pipelines through `load_pipeline`, so both
run the same pipeline for the same arguments.
"""

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import spacy
from confection import ConfigValidationError
from huggingface_hub.utils import logging as hf_logging
from spacy import util
from spacy.language import Language
from transformers.utils import logging as transformers_logging

from .checkpoint import check_folder, missing_local_folder
from .errors import error_line
from .model import CheckpointError, check_device

FACTORY = "luke_ner"
# Pipe metadata that means a component sets sentence boundaries.
SENTENCE_ASSIGNS = ("token.is_sent_start", "doc.sents")


def load_pipeline(
    *,
    model: Optional[str] = None,
    pipeline: Optional[str] = None,
    lang: str = "en",
    gpu: int = -1,
    overrides: Optional[Dict[str, Any]] = None,
    sentencizer: Optional[bool] = None,
) -> Tuple[Language, List[str]]:
    """Build or load a pipeline with luke_ner and load its checkpoints, so that load errors
    come here rather than on the first text.

    model (Optional[str]): Hub id or local checkpoint folder for a blank pipeline; None is the
        component's default checkpoint.
    pipeline (Optional[str]): A saved pipeline folder or an installed pipeline package, loaded
        with `spacy.load` instead of a blank pipeline.
    lang (str): Language of the blank pipeline's tokenizer.
    gpu (int): GPU id, -1 for CPU.
    overrides (Optional[Dict[str, Any]]): luke_ner settings, e.g. {"context": "sentence",
        "dtype": "bfloat16"}, applied as config overrides so that they are validated.
    sentencizer (Optional[bool]): Add spaCy's sentencizer before luke_ner; None adds it to a
        blank pipeline, and to a saved one only when no earlier component sets sentences.
    RETURNS (Tuple[Language, List[str]]): The pipeline, with spaCy's `max_length` lifted
        (luke_ner streams long Docs), and the spans keys of its luke_ner components.
    RAISES (CheckpointError): The checkpoint cannot be loaded.
    RAISES (ValueError): Invalid arguments or settings, or no luke_ner in the pipeline.
    RAISES (OSError): The pipeline cannot be read.
    """
    if model is not None and pipeline is not None:
        raise ValueError("give a model or a pipeline, not both")
    settings = dict(overrides or {})
    if gpu >= 0:
        device = _gpu_device(gpu)
        if device is not None:
            settings.setdefault("device", device)
    # The hub client logs every retry of an unreachable network, and older transformers warn
    # about their own arguments and added tokens; the error raised here says what failed.
    hf_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    what = f"the pipeline {pipeline}" if pipeline is not None else "the model"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="huggingface_hub")
            nlp, names = _initialized(pipeline, lang, model, settings)
    except CheckpointError:
        raise
    except ConfigValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}"
            for error in err.errors
        )
        raise ValueError(f"cannot load {what}: invalid settings: {problems}") from err
    except (ImportError, ValueError) as err:  # ImportError: an optional extra is missing
        raise ValueError(f"cannot load {what}: {error_line(err)}") from err
    except OSError as err:
        raise OSError(f"cannot load {what}: {error_line(err)}") from err
    if sentencizer is None:
        sentencizer = pipeline is None or not _sets_sentences(nlp, names[0])
    if sentencizer and "sentencizer" not in nlp.pipe_names:
        nlp.add_pipe("sentencizer", before=names[0])
    # luke_ner streams long Docs (passes are planned lazily and sentences decoded as they
    # complete), so spaCy's guard against the memory of long Docs would only turn long texts
    # into errors, in every engine that loads through here.
    nlp.max_length = sys.maxsize
    spans_keys = [nlp.get_pipe(name).settings.spans_key for name in names]
    return nlp, [key for key in spans_keys if key is not None]


def _initialized(
    pipeline: Optional[str], lang: str, model: Optional[str], settings: Dict[str, Any]
) -> Tuple[Language, List[str]]:
    """The pipeline with its luke_ner components' checkpoints loaded, and their names."""
    if pipeline is not None:
        nlp = _load_saved(pipeline, settings)
    else:
        nlp = _build_blank(lang, model, settings)
    names = luke_ner_names(nlp)
    if not names:
        raise ValueError(f"the pipeline {pipeline} has no luke_ner component")
    for name in names:
        nlp.get_pipe(name).initialize(nlp=nlp)
    return nlp, names


def luke_ner_names(nlp: Language) -> List[str]:
    """The names of the pipeline's luke_ner components, in pipeline order."""
    return [name for name in nlp.pipe_names if nlp.get_pipe_config(name)["factory"] == FACTORY]


def _build_blank(lang: str, model: Optional[str], settings: Dict[str, Any]) -> Language:
    try:
        nlp = spacy.blank(lang)
    except ImportError as err:
        raise ValueError(f"no spaCy language {lang!r}: {error_line(err)}") from err
    config = dict(settings)
    if model is not None:
        config["model"] = {**config.get("model", {}), "name": _model_name(model)}
    nlp.add_pipe(FACTORY, config=config)
    return nlp


def _load_saved(pipeline: str, settings: Dict[str, Any]) -> Language:
    if not settings:
        return spacy.load(pipeline)
    config_path = _config_path(pipeline)
    if config_path is None:
        return spacy.load(pipeline)  # spaCy says why it cannot find the pipeline
    components = util.load_config(config_path)["components"]
    names = [name for name, block in components.items() if block.get("factory") == FACTORY]
    return spacy.load(pipeline, config={"components": {name: settings for name in names}})


def _config_path(pipeline: str) -> Optional[Path]:
    """The config.cfg of a saved pipeline folder or an installed pipeline package."""
    path = Path(pipeline)
    if not path.exists() and util.is_package(pipeline):
        # spacy.load's layout of a package: its data folder is named after its meta.
        package = util.get_package_path(pipeline)
        meta = util.get_model_meta(package)
        path = package / f"{meta['lang']}_{meta['name']}-{meta['version']}"
    config_path = path / "config.cfg"
    return config_path if config_path.is_file() else None


def _gpu_device(gpu_id: int) -> Optional[str]:
    """Select the GPU: `spacy.require_gpu(gpu_id)`; without CuPy, the torch device to give
    luke_ner (the component runs in torch, so CuPy is optional)."""
    try:
        spacy.require_gpu(gpu_id)
        return None
    except (ValueError, RuntimeError, ImportError):
        device = f"cuda:{gpu_id}"
        # Says what is missing for torch (a CUDA build, a visible GPU), not for CuPy.
        check_device(device)
        return device


def check_model(name: str) -> str:
    """Check a `--model` as far as can be done without loading it, for an engine that loads
    it elsewhere (Ray actors), so a wrong name fails before a cluster starts as it does
    locally.

    name (str): Hub id or local folder.
    RETURNS (str): The name, with `~` expanded.
    RAISES (CheckpointError): A path-like name that is no folder, or a local folder with
        missing or damaged files (`checkpoint.check_folder`).
    """
    name = _model_name(name)
    if os.path.isdir(name):
        check_folder(Path(name))
    return name


def _model_name(name: str) -> str:
    """The model name; a path-like one that is no folder fails before any loading."""
    name = os.path.expanduser(name)
    message = missing_local_folder(name)
    if message is not None:
        raise CheckpointError(message)
    return name


def _sets_sentences(nlp: Language, before: str) -> bool:
    """Whether a component before `before` sets sentence boundaries."""
    for name in nlp.pipe_names:
        if name == before:
            return False
        assigns = nlp.get_pipe_meta(name).assigns
        if any(attr in assigns for attr in SENTENCE_ASSIGNS):
            return True
    return False

