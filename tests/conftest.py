"""Shared fixtures: tiny random checkpoints that the tests build themselves."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import spacy
import torch

# Tests never wait on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: quick tiny-model tests on two cores (forks under several threads are tested in
# test_multiprocessing.py, in a child process under a timeout).
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def load_script(name: str):
    """A module of the project's scripts/ folder."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_project_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The one independent reference for decoding: the notebook's loop, as the project's
# `reference` step runs it.
notebook_decode = load_script("reference").notebook_decode


def recipe_context(L: int, R: int, S: int, max_length: int = 510):
    """The legacy recipe's context formula, transcribed from studio-ousia/luke
    examples/legacy/ner/utils.py: a deliberately independent reference for windowing."""
    half = int((max_length - S) / 2)
    if L < R:
        left = min(L, half)
        right = min(R, max_length - left - S)
    else:
        right = min(R, half)
        left = min(L, max_length - right - S)
    return left, right


def make_nlp(path, **cfg):
    """A blank English pipeline with luke_ner on the checkpoint at `path`, settings `cfg`."""
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(path)}, **cfg})
    return nlp


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture(scope="session")
def tiny_luke(tmp_path_factory) -> Path:
    """A tiny LUKE-shaped span classifier (BPE trained on the fly, [MASK]=2, NIL first)."""
    from luke_spacy.random_model import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("tiny_luke"), classifier_std=1.0)


@pytest.fixture(scope="session")
def tiny_mluke(tmp_path_factory) -> Path:
    """A tiny mLUKE-shaped span classifier (SentencePiece, no entity-aware attention,
    [MASK]=0, labels O/LOC/PER/ORG/MISC)."""
    pytest.importorskip("sentencepiece")
    from luke_spacy.random_model import build_random_checkpoint

    return build_random_checkpoint(
        tmp_path_factory.mktemp("tiny_mluke"), kind="mluke", classifier_std=1.0
    )


@pytest.fixture(scope="session")
def tiny_luke_real_bpe(tmp_path_factory) -> Path:
    """A tiny model with the real RoBERTa vocabulary of the default checkpoint."""
    from luke_spacy.random_model import build_random_checkpoint

    bpe = shared_path("roberta-bpe")
    return build_random_checkpoint(
        tmp_path_factory.mktemp("tiny_luke_bpe"), bpe_dir=bpe, classifier_std=1.0
    )


@pytest.fixture()
def small_max_length(monkeypatch) -> int:
    """Blank pipelines get spaCy's `max_length` = 20, so ordinary test texts are "too long"."""
    blank = spacy.blank

    def small_blank(lang: str):
        nlp = blank(lang)
        nlp.max_length = 20
        return nlp

    monkeypatch.setattr(spacy, "blank", small_blank)
    return 20
