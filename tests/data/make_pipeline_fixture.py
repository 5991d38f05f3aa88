"""Write a luke_ner pipeline folder with the luke_spacy on PYTHONPATH, and its entities.

Usage: HF_HUB_OFFLINE=1 PYTHONPATH=<checkout> python tests/data/make_pipeline_fixture.py OUT
"""

import json
import shutil
import sys
from pathlib import Path

import spacy

from luke_spacy.random_model import SAMPLE_TEXT, build_random_checkpoint

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
out.mkdir(parents=True)
ckpt = build_random_checkpoint(
    out.parent / "ckpt-tmp",
    config={
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "entity_emb_size": 8,
    },
    vocab_size=300, classifier_std=1.0,
)
nlp = spacy.blank("en")
nlp.add_pipe("sentencizer")
nlp.add_pipe("luke_ner", config={"model": {"name": str(ckpt)}, "max_mention_length": 12})
nlp.initialize()
nlp.to_disk(out / "pipeline")
shutil.rmtree(ckpt)
texts = list(SAMPLE_TEXT)
expected = {
    "texts": texts,
    "entities": [[[e.start, e.end, e.label_] for e in nlp(t).ents] for t in texts],
    "scores": [[float(s) for s in nlp(t).spans["luke_ner"].attrs["scores"]] for t in texts],
    "labels": list(nlp.get_pipe("luke_ner").labels),
}
(out / "expected.json").write_text(json.dumps(expected, indent=1), encoding="utf8")
print(sum(map(len, expected["entities"])), "entities")
