"""Every config in configs/ passes spaCy's own validation (`spacy debug config`) as shipped."""

from __future__ import annotations

from pathlib import Path

import pytest
from spacy.cli.debug_config import debug_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.cfg"))


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_spacy_debug_config_accepts(path, tmp_path, capsys):
    """As a user runs it: the data paths given on the command line, nothing else filled in.
    Validation exits (SystemExit) on the first error."""
    overrides = {"paths.train": str(tmp_path / "train.spacy"), "paths.dev": str(tmp_path / "dev")}
    debug_config(path, overrides=overrides)
    assert "Config is valid" in capsys.readouterr().out
