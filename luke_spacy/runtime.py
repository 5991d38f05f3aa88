"""The LUKE runtime behind `luke_ner`: the one seam between the spaCy pipe and torch.

The pipe asks this object for the checkpoint's tokenizer and labels, hands it batches of
passes to score or to learn from, and saves or loads it. Everything that touches the Thinc
shim or the torch modules (loading, device placement, autocast, attention choice, dropout,
threads after a fork) happens here or in `model.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy
import torch
from spacy_transformers.data_classes import HFObjects
from thinc.api import Model, get_torch_default_device

from .attention import fuse_entity_aware_attention, unfuse_entity_aware_attention
from .encoding import Pass, collate
from .model import (
    entity_ids,
    get_objects,
    get_scorer,
    labels_of,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_inference_dtype,
    set_objects,
)
from .settings import NerSettings
from .tokenization import WordTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a training step returns: the span logits and the callback that takes their gradient.
Backprop = Callable[[torch.Tensor], object]


class NotLoadedError(ValueError):
    """The checkpoint was never loaded, so there is nothing to save."""


class LukeRuntime:
    """A `luke_spacy.LukeSpanClassifier.v1` model, ready to score and train.

    The checkpoint is loaded on first use, so `spacy.load` of a saved pipeline never looks a
    hub id up. Whenever the loaded objects change (first use, `initialize`, `from_disk`), the
    settings that depend on them are applied again: the attention implementation, the word
    tokenizer and the check of the window size against the position embeddings.

    model (Model): The component's Thinc model.
    settings (NerSettings): The component's settings.
    """

    def __init__(self, model: Model, settings: NerSettings) -> None:
        self.model = model
        self.settings = settings
        self._prepared: Optional[HFObjects] = None
        self._word_tokenizer: Optional[WordTokenizer] = None
        # The process that last ran torch here; a fork since then needs one thread (see run).
        self._pid: Optional[int] = None

    def __getstate__(self) -> Dict[str, object]:
        # A pickled runtime (spawn, or a pipeline pickled to disk) runs in a fresh process,
        # not a fork: it must not inherit the guard's record of who ran torch.
        return {**self.__dict__, "_pid": None}

    @property
    def is_loaded(self) -> bool:
        """Whether the checkpoint is in memory (loaded, initialized or read from disk)."""
        return get_objects(self.model) is not None

    def objects(self) -> HFObjects:
        """The loaded tokenizer and transformer, loading the checkpoint on first use."""
        objects = get_objects(self.model)
        if objects is None:
            objects = load_weights(self.model)
        if objects is not self._prepared:
            self._prepare(objects)
        return objects

    @property
    def tokenizer(self):
        """The checkpoint's Hugging Face tokenizer."""
        return self.objects().tokenizer

    @property
    def word_tokenizer(self) -> WordTokenizer:
        """Subword ids of words, as the checkpoint's tokenizer gives them."""
        self.objects()
        assert self._word_tokenizer is not None
        return self._word_tokenizer

    @property
    def labels(self) -> List[str]:
        """The checkpoint's labels in id order; label 0 is the no-entity class."""
        return labels_of(self.objects())

    @property
    def hidden_size(self) -> int:
        return self.objects().transformer.config.hidden_size

    def load(self, labels: Optional[Sequence[str]] = None) -> None:
        """Load the checkpoint the model names (hub id, local folder or Hugging Face cache).

        labels (Optional[Sequence[str]]): Entity labels to train: the checkpoint is reloaded
            with a head for exactly these (kept when it already has them).
        """
        load_weights(self.model, labels=labels)
        self.objects()

    def load_local(self, path: Union[str, Path]) -> None:
        """Load a checkpoint folder written by `save`; never touches the network."""
        set_objects(self.model, load_checkpoint(str(path), local_files_only=True))
        self.objects()

    def save(self, path: Union[str, Path]) -> None:
        """Write config, safetensors weights and tokenizer files into a folder."""
        save_checkpoint(self._loaded(), Path(path))

    def to_bytes(self) -> bytes:
        self._loaded()
        return self.model.to_bytes()

    def from_bytes(self, data: bytes) -> None:
        self.model.from_bytes(data)
        self.objects()

    def collate(
        self, passes: Sequence[Pass], device: Union[torch.device, str, None] = None
    ) -> Dict[str, torch.Tensor]:
        """The model inputs of passes padded into one batch, with the checkpoint's ids.

        passes (Sequence[Pass]): Passes of `encoding.plan_doc`.
        device (Union[torch.device, str, None]): Where the tensors go; the model's device
            when None.
        RETURNS (Dict[str, torch.Tensor]): The `LukeForEntitySpanClassification` inputs.
        """
        tokenizer = self.tokenizer
        mask_id, pad_entity_id = entity_ids(tokenizer)
        return collate(
            passes,
            cls_id=tokenizer.cls_token_id,
            sep_id=tokenizer.sep_token_id,
            pad_id=tokenizer.pad_token_id,
            mask_entity_id=mask_id,
            pad_entity_id=pad_entity_id,
            max_mention_length=self.settings.max_mention_length,
            device=self.device() if device is None else device,
        )

    def run(
        self, passes: Sequence[Pass], want_words: bool = False
    ) -> Tuple[numpy.ndarray, Optional[numpy.ndarray]]:
        """Score one batch of passes (inference): span logits and, if asked, word states.

        RETURNS (Tuple[numpy.ndarray, Optional[numpy.ndarray]]): (rows, spans, labels) float32
            logits and (rows, words, hidden) float32 final states, or None.
        """
        if self._pid is not None and self._pid != os.getpid():
            # A forked child inherits libgomp's thread pool in a state that hangs its next
            # parallel region; one thread runs without the pool (as OMP_NUM_THREADS=1 does).
            torch.set_num_threads(1)
        self._pid = os.getpid()
        batch = self.collate(passes)
        device = batch["input_ids"].device
        if self.settings.dtype == "float16" and device.type == "cpu":
            raise ValueError("dtype = 'float16' needs a GPU; use 'bfloat16' or 'float32' on CPU.")
        logits, words = self.model.predict((batch, want_words))
        return (
            logits.float().cpu().numpy(),
            words.float().cpu().numpy() if words is not None else None,
        )

    def begin_update(
        self, passes: Sequence[Pass], drop: float = 0.0
    ) -> Tuple[torch.Tensor, Backprop]:
        """Forward one batch of passes for training; gradients accumulate until the
        optimizer step (`model.finish_update`).

        RETURNS (Tuple[torch.Tensor, Callable]): The logits and a callback taking d_logits.
        """
        for module in get_scorer(self.model).modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = drop
        (logits, _), backprop = self.model.begin_update((self.collate(passes), False))
        return logits, backprop

    def device(self) -> torch.device:
        """Move the model to the configured device (or thinc's current one) and return it."""
        if self.settings.device is not None:
            device = torch.device(self.settings.device)
        else:
            device = get_torch_default_device()
        self.objects()
        scorer = get_scorer(self.model)
        if next(scorer.parameters()).device != device:
            scorer.to(device)
        return device

    def _prepare(self, objects: HFObjects) -> None:
        config = objects.transformer.config
        capacity = config.max_position_embeddings - config.pad_token_id - 3
        if self.settings.max_length > capacity:
            raise ValueError(
                f"max_length = {self.settings.max_length} does not fit the checkpoint, whose "
                f"max_position_embeddings = {config.max_position_embeddings} allows at most "
                f"{capacity} subwords per window; set max_length to {capacity} or less."
            )
        if self.settings.attention == "sdpa":
            fuse_entity_aware_attention(objects.transformer)
        else:
            unfuse_entity_aware_attention(objects.transformer)
        set_inference_dtype(self.model, DTYPES[self.settings.dtype])
        self._word_tokenizer = WordTokenizer(objects.tokenizer)
        self._prepared = objects

    def _loaded(self) -> HFObjects:
        if not self.is_loaded:
            raise NotLoadedError(
                "luke_ner has no checkpoint in memory, so there is nothing to save (saving "
                "never downloads one). Call nlp.initialize() or process a text first, which "
                "loads the checkpoint that [components.luke_ner.model] name points to."
            )
        return self.objects()
