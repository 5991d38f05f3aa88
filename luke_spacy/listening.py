"""Downstream components that listen to luke_ner's word representations.

A `tagger`, `textcat` or any component whose tok2vec is spacy-transformers'
`spacy-transformers.TransformerListener.v1` with `upstream = "luke_ner"` (the component's
name) gets LUKE's final subword states as `TransformerData`, one per Doc, as from a
spacy-transformers `transformer` component: in training from luke_ner's `update` (with a
gradient back into LUKE), otherwise from `doc._.trf_data`. This module holds the parts that
do not depend on the component: the listeners' width, and handing a batch's outputs to the
listeners with one backward pass for all of them.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy
from spacy.tokens import Doc
from spacy_transformers.data_classes import TransformerData
from spacy_transformers.layers import TransformerListener
from thinc.api import Model

# Receives the summed gradient of each Doc's word states, (n_subwords, hidden) or None.
StatesBackprop = Callable[[List[Optional[numpy.ndarray]]], None]


def is_listener(node: Model, upstream: str) -> bool:
    """Whether a model node listens to the component named `upstream`.

    Only listeners that name the component: `upstream = "*"` is spacy-transformers'
    wildcard for its own `transformer` component, which luke_ner does not stand in for.
    """
    return isinstance(node, TransformerListener) and node.upstream_name == upstream


def unanswered_wildcards(components: Sequence[Any], answered: Sequence[Model]) -> List[str]:
    """Names of the components with a listener of `upstream = "*"` (spacy-transformers'
    wildcard) that is not among the `answered` listeners (of any component)."""
    ids = {id(node) for node in answered}
    return [
        component.name
        for component in components
        if isinstance(getattr(component, "model", None), Model)
        and any(is_listener(node, "*") and id(node) not in ids for node in component.model.walk())
    ]


def set_width(listener: Model, width: int) -> None:
    """Give a listener its output width (LUKE's hidden size), as spacy-transformers does.

    A listener restored from a saved pipeline has its width already; one that differs (a
    checkpoint of another size) is refused here rather than failing inside the listening
    component's layers.
    """
    restore_init(listener)
    if listener.has_dim("nO") is None:
        listener.set_dim("nO", width)
    elif listener.get_dim("nO") != width:
        raise ValueError(
            f"luke_ner: a listener of width {listener.get_dim('nO')} cannot listen to this "
            f"checkpoint, whose word states have {width} dimensions. Train the listening "
            "component on this checkpoint (or load the checkpoint it was trained on)."
        )


class WidthOnInit:
    """A listener's `init` that first sets its width from luke_ner's checkpoint.

    spaCy links listeners when a pipeline is built, before luke_ner has read its checkpoint
    (building reads nothing). A listening component initialized before luke_ner is (luke_ner
    frozen, so never initialized, or initialized later) then needs the width: this reads it,
    loading the checkpoint, and puts the listener's own `init` back.

    source (Any): Holds the width as `hidden_size` (luke_ner's runtime; reading it loads the
        checkpoint).
    init (Callable): The listener's own init.
    """

    def __init__(self, source: Any, init: Callable) -> None:
        self.source = source
        self.init = init

    def __call__(self, model: Model, X: Any = None, Y: Any = None) -> Any:
        set_width(model, self.source.hidden_size)
        return model.init(model, X=X, Y=Y)


def defer_width(listener: Model, source: Any) -> None:
    """Have the listener take its width from `source.hidden_size` when it is initialized."""
    if listener.has_dim("nO") is None and not isinstance(listener.init, WidthOnInit):
        listener.init = WidthOnInit(source, listener.init)


def restore_init(listener: Model) -> None:
    """Take back `defer_width`."""
    if isinstance(listener.init, WidthOnInit):
        listener.init = listener.init.init


def send_to_listeners(
    listeners: Sequence[TransformerListener],
    docs: Sequence[Doc],
    outputs: List[TransformerData],
    has_states: Sequence[bool],
    backprop_states: StatesBackprop,
) -> None:
    """Give each listener the batch's outputs; the gradients of all listeners are summed and
    go back in one call, from the last listener's backward pass, as spacy-transformers'
    `Transformer.update` does.

    listeners (Sequence[TransformerListener]): The listeners, in pipeline order.
    docs (Sequence[Doc]): The predicted Docs of the update (they identify the batch).
    outputs (List[TransformerData]): One per Doc.
    has_states (Sequence[bool]): Whether a Doc's output holds word states (False for the
        zero placeholder of a Doc without subwords, whose gradient goes nowhere).
    backprop_states (StatesBackprop): Takes the summed gradient of each Doc's states.
    """
    summed: List[Optional[numpy.ndarray]] = [None] * len(docs)

    def accumulate(d_outputs: List[TransformerData]) -> List[Doc]:
        if len(d_outputs) != len(docs):
            raise ValueError(
                f"luke_ner: a listener returned gradients for {len(d_outputs)} of "
                f"{len(docs)} Docs."
            )
        for i, d_output in enumerate(d_outputs):
            if not has_states[i]:
                continue
            grad = d_output.model_output.last_hidden_state[0]
            summed[i] = grad if summed[i] is None else summed[i] + grad
        return []

    def backprop(d_outputs: List[TransformerData]) -> List[Doc]:
        accumulate(d_outputs)
        backprop_states(list(summed))
        summed[:] = [None] * len(docs)
        return []

    batch_id = TransformerListener.get_batch_id(docs)
    for listener in listeners[:-1]:
        listener.receive(batch_id, outputs, accumulate)
    listeners[-1].receive(batch_id, outputs, backprop)


def refuse_replacing_listeners(*args: Any) -> None:
    """luke_ner's model as `replace_listener_cfg`: `nlp.replace_listeners` would copy it
    into the listening component, where a span classifier cannot stand in for a tok2vec."""
    raise ValueError(
        "luke_ner's model scores entity spans and cannot replace a listener: keep the "
        "listener, and freeze luke_ner with it in [training] annotating_components so the "
        "listening component's inputs stay the same."
    )
