"""`NerSettings`: one owner of the settings, validated once, with the only defaults."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path
from typing import get_args

import pytest
import spacy
from confection import Config

from luke_spacy import NerSettings, make_luke_ner
from luke_spacy.model import build_luke_span_classifier
from luke_spacy.pipe import DEFAULT_CONFIG
from luke_spacy.settings import Attention, Context, DType, SettingsError, config_defaults

BAD = [
    ({"max_mention_length": 0}, "max_mention_length"),
    ({"max_mention_length": -3}, "max_mention_length"),
    ({"max_mention_length": True}, "max_mention_length"),
    ({"max_entity_length": 1.5}, "max_entity_length"),
    ({"max_length": 0}, "max_length"),
    ({"max_batch_items": 0}, "max_batch_items"),
    ({"max_mention_length": 40, "max_length": 20}, "max_mention_length"),
    ({"context": "paragraph"}, "context"),
    ({"dtype": "int8"}, "dtype"),
    ({"attention": "flash"}, "attention"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.1}, "threshold"),
    ({"threshold": "high"}, "threshold"),
    ({"threshold": {"PER": 1.5}}, "threshold"),
    ({"threshold": {"PER": "high"}}, "threshold"),
    ({"threshold": {"PER": True}}, "threshold"),
    ({"threshold": {1: 0.5}}, "threshold"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"nil_veto": False}, "nil_veto"),
    ({"nested_spans_key": ""}, "nested_spans_key"),
    ({"nested_spans_key": "luke_ner"}, "nested_spans_key"),
    ({"gold_spans_key": 3}, "gold_spans_key"),
    ({"onnx_path": "export"}, "onnx_path"),  # with backend "torch", which ignores it
    ({"backend": "onnxruntime", "dtype": "bfloat16"}, "dtype"),
    ({"backend": "onnxruntime", "dtype": "float16"}, "dtype"),
]


@pytest.mark.parametrize("kwargs,key", BAD)
def test_invalid_settings_name_the_setting(kwargs, key):
    with pytest.raises(ValueError, match=f"luke_ner: {key}"):
        NerSettings(**kwargs)


@pytest.mark.parametrize(
    "key,choices", [("context", Context), ("dtype", DType), ("attention", Attention)]
)
def test_allowed_values_are_the_literal_types(key, choices):
    for value in get_args(choices):
        assert getattr(NerSettings(**{key: value}), key) == value
    with pytest.raises(ValueError) as info:
        NerSettings(**{key: "other"})
    assert str(get_args(choices)) in str(info.value)


def test_the_default_config_is_written_from_the_settings():
    defaults = NerSettings()
    section = Config().from_str(config_defaults("luke_ner"))["luke_ner"]
    assert section == defaults.to_dict()
    filled = spacy.blank("en").add_pipe("luke_ner").settings  # nothing is read at add_pipe
    assert filled == defaults
    component = DEFAULT_CONFIG["luke_ner"]
    assert {k: v for k, v in component.items() if k in section} == section


def test_the_model_defaults_are_the_architectures():
    model = dict(DEFAULT_CONFIG["luke_ner"]["model"])
    assert model.pop("@architectures") == "luke_spacy.LukeSpanClassifier.v1"
    signature = inspect.signature(build_luke_span_classifier).parameters
    assert model == {key: signature[key].default for key in model}


def test_the_factory_takes_every_setting_and_only_those():
    parameters = set(inspect.signature(make_luke_ner).parameters)
    assert parameters == {f.name for f in fields(NerSettings)} | {"nlp", "name", "model", "scorer"}


def test_a_model_given_as_a_string_says_what_shape_is_expected():
    nlp = spacy.blank("en")
    with pytest.raises(ValueError) as info:
        nlp.add_pipe("luke_ner", config={"model": "/path/to/checkpoint"})
    message = str(info.value)
    assert "{'model': {'name': '/path/to/checkpoint'}}" in message
    assert '[components.luke_ner.model] name = "/path/to/checkpoint"' in message
    assert len(message.splitlines()) == 1 and "thinc" not in message


# Values of the right type but out of range, as a config gives them (#23 item 6).
OUT_OF_RANGE = [
    ({"max_mention_length": 0}, ["max_mention_length"]),
    ({"max_mention_length": 1000}, ["max_mention_length"]),
    ({"max_entity_length": 0}, ["max_entity_length"]),
    ({"max_length": 3}, ["max_mention_length"]),
    ({"max_batch_items": 0}, ["max_batch_items"]),
    ({"threshold": -1}, ["threshold"]),
    ({"threshold": 2}, ["threshold"]),
    ({"spans_key": ""}, ["spans_key"]),
    ({"device": "tpu"}, ["device"]),
    ({"max_entity_length": 0, "threshold": 2}, ["max_entity_length", "threshold"]),
    ({"onnx_path": "export"}, ["onnx_path"]),
    ({"backend": "onnxruntime", "dtype": "bfloat16"}, ["dtype"]),
]


@pytest.mark.parametrize("config,keys", OUT_OF_RANGE)
def test_out_of_range_settings_are_config_errors_at_add_pipe(config, keys):
    """As spaCy reports a value of the wrong type: a ConfigValidationError that locates each
    setting under the component's name (here "ner2")."""
    from confection import ConfigValidationError

    nlp = spacy.blank("en")
    with pytest.raises(ConfigValidationError) as info:
        nlp.add_pipe("luke_ner", name="ner2", config=config)
    assert [error["loc"] for error in info.value.errors] == [["ner2", key] for key in keys]
    assert info.value.title == "Config error for 'luke_ner'"
    assert f"ner2 -> {keys[0]}\t" in str(info.value)


def test_nan_threshold_is_refused():
    # spaCy refuses NaN in a config itself (not JSON); Python callers get this.
    with pytest.raises(ValueError, match="luke_ner: threshold must be between 0.0 and 1.0"):
        NerSettings(threshold=float("nan"))


@pytest.mark.parametrize(
    "override,key,message",
    [
        ({"components.luke_ner.max_length": 3}, "max_mention_length", "cannot exceed"),
        ({"components.luke_ner.max_batch_items": 0}, "max_batch_items", "positive integer"),
        ({"components.luke_ner.threshold": 2.0}, "threshold", "between 0.0 and 1.0"),
        ({"components.luke_ner.device": "tpu"}, "device", "not a torch device"),
        ({"components.luke_ner.spans_key": ""}, "spans_key", "non-empty string"),
    ],
)
def test_spacy_debug_config_reports_out_of_range_settings(override, key, message, tmp_path, capsys):
    """`spacy debug config` on a config file: the formatted config error, no traceback."""
    from spacy.cli.debug_config import debug_config

    config = Path(__file__).resolve().parents[1] / "configs" / "luke_ner_custom.cfg"
    paths = {"paths.train": str(tmp_path / "t.spacy"), "paths.dev": str(tmp_path / "d")}
    overrides = {**paths, **override}
    with pytest.raises(SystemExit) as info:
        debug_config(config, overrides=overrides)
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "✘ Config error for 'luke_ner'" in out
    assert re.search(rf"luke_ner -> {key}\t.*{message}", out)


@pytest.mark.slow
def test_spacy_train_reports_out_of_range_settings_without_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[1] / "configs" / "luke_ner_custom.cfg"
    cmd = [
        sys.executable, "-m", "spacy", "train", str(config),
        "--paths.train", str(tmp_path / "t.spacy"), "--paths.dev", str(tmp_path / "d.spacy"),
        "--components.luke_ner.max_mention_length", "1000",
        "--components.luke_ner.threshold", "-1",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "✘ Config error for 'luke_ner'" in output
    assert "luke_ner -> max_mention_length\t(1000) cannot exceed max_length (510)" in output
    assert "luke_ner -> threshold\tmust be between 0.0 and 1.0, got -1" in output


def test_a_threshold_table_is_kept_as_a_copy():
    table = {"PER": 1, "LOC": 0.25}
    settings = NerSettings(threshold=table)
    table["PER"] = 0.0
    assert settings.threshold == {"LOC": 0.25, "PER": 1.0}
    assert isinstance(settings.threshold["PER"], float)
    # with nil_veto off, a table is checked against the model's labels when they are loaded
    # (tests/test_nested.py); a 0.0 entry is refused at once
    assert NerSettings(threshold={"PER": 0.5}, nil_veto=False).nil_veto is False
    with pytest.raises(SettingsError, match=r"nil_veto = false .* got 0.0 for \['PER'\]"):
        NerSettings(threshold={"PER": 0.0, "LOC": 0.5}, nil_veto=False)
    assert NerSettings(threshold=0.3, nil_veto=False).threshold == 0.3
