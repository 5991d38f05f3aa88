"""Stand-in checkpoints with random weights, for tests, smoke runs and speed benchmarks.

The LUKE weights cannot always be downloaded (CI, air-gapped machines), but speed does not
depend on weight values and the recipe can be checked on any weights. These builders write a
folder that loads exactly like a real `LukeForEntitySpanClassification` checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from transformers import LukeConfig, LukeForEntitySpanClassification, LukeTokenizer

from .checkpoint import SENTENCEPIECE_MISSING, SPAN_CLASSIFIER, has_sentencepiece

LUKE_LABELS = ("NIL", "MISC", "PER", "ORG", "LOC")
MLUKE_LABELS = ("O", "LOC", "PER", "ORG", "MISC")
# Entity vocabularies of the released checkpoints: the full LUKE vocabulary starts
# [PAD], [UNK], [MASK]; the mLUKE/-lite ones are {[MASK]: 0, [UNK]: 1, [PAD]: 2, [MASK2]: 3}.
LUKE_ENTITY_VOCAB = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "[MASK2]": 3}
MLUKE_ENTITY_VOCAB = {"[MASK]": 0, "[UNK]": 1, "[PAD]": 2, "[MASK2]": 3}
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "entity_emb_size": 16,
}
SAMPLE_TEXT = (
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice .",
    "Germany 's representative to the European Union 's veterinary committee Werner "
    "Zwingmann said on Wednesday consumers should buy sheepmeat from countries other "
    "than Britain until the scientific advice was clearer .",
    "Beyoncé lives in Los Angeles . She met Barack Obama in Paris !",
    "Japan , China and South Korea ; 3,000 people ( 12.5 % ) -- \"quoted\" 'words' ?",
)


def build_random_checkpoint(
    path: str | Path,
    *,
    kind: str = "luke",
    config: Optional[Dict[str, Any]] = None,
    bpe_dir: Optional[str | Path] = None,
    corpus: Optional[Iterable[str]] = None,
    vocab_size: int = 600,
    labels: Optional[Sequence[str]] = None,
    seed: int = 0,
    classifier_std: Optional[float] = None,
) -> Path:
    """Write a random-weight span-classification checkpoint folder.

    path (str | Path): Output folder.
    kind (str): "luke" (byte-level BPE, entity-aware attention, [MASK]=2) or "mluke"
        (SentencePiece, no entity-aware attention, [MASK]=0).
    config (Optional[Dict[str, Any]]): LukeConfig fields; the TINY sizes when None. Pass a
        real config.json's content for a full-size model.
    bpe_dir (Optional[str | Path]): Folder with RoBERTa vocab.json and merges.txt (LUKE only);
        otherwise a tokenizer is trained on `corpus`.
    corpus (Optional[Iterable[str]]): Text to train the tokenizer on (SAMPLE_TEXT when None).
    vocab_size (int): Size of a tokenizer trained on the fly.
    labels (Optional[Sequence[str]]): Labels in id order, no-entity class first.
    seed (int): Torch seed of the weights.
    classifier_std (Optional[float]): Std of the classifier weights, to widen logit margins.
    RETURNS (Path): The folder.
    """
    if kind not in ("luke", "mluke"):
        raise ValueError(f"kind must be 'luke' or 'mluke', got {kind!r}")
    missing = missing_requirement(kind)
    if missing is not None:
        raise ImportError(missing)
    from spacy_transformers.data_classes import HFObjects

    from .model import save_checkpoint

    path = Path(path)
    corpus = list(corpus) if corpus is not None else list(SAMPLE_TEXT)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "luke":
            tokenizer = _luke_tokenizer(Path(tmp), bpe_dir, corpus, vocab_size)
        else:
            tokenizer = _mluke_tokenizer(Path(tmp), corpus, vocab_size)
        model = _random_model(tokenizer, kind, config, labels, seed, classifier_std)
        # As the component writes checkpoints: the same files, permissions and settings.
        save_checkpoint(HFObjects(tokenizer, model, None, {}, {}), path)
    return path


def _random_model(
    tokenizer: Any,
    kind: str,
    config: Optional[Dict[str, Any]],
    labels: Optional[Sequence[str]],
    seed: int,
    classifier_std: Optional[float],
) -> LukeForEntitySpanClassification:
    """A span classifier with random weights that fits the tokenizer."""
    labels = tuple(labels or (LUKE_LABELS if kind == "luke" else MLUKE_LABELS))
    fields = dict(TINY if config is None else config)
    for key in ("architectures", "id2label", "label2id", "transformers_version", "model_type"):
        fields.pop(key, None)
    fields.update(
        vocab_size=len(tokenizer),
        entity_vocab_size=len(tokenizer.entity_vocab),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        architectures=[SPAN_CLASSIFIER],
    )
    fields.setdefault("max_position_embeddings", 514)
    fields.setdefault("type_vocab_size", 1)
    fields.setdefault("layer_norm_eps", 1e-5)
    fields.setdefault("use_entity_aware_attention", kind == "luke")
    torch.manual_seed(seed)
    model = LukeForEntitySpanClassification(LukeConfig(**fields))
    if classifier_std is not None:
        torch.nn.init.normal_(model.classifier.weight, std=classifier_std)
    return model


def missing_requirement(kind: str) -> Optional[str]:
    """What must be installed before a checkpoint of this kind can be built, or None."""
    if kind == "mluke" and not has_sentencepiece():
        return f"--kind mluke: {SENTENCEPIECE_MISSING}"
    return None


def _luke_tokenizer(
    tmp: Path, bpe_dir: Optional[str | Path], corpus: Sequence[str], vocab_size: int
) -> LukeTokenizer:
    if bpe_dir is not None:
        vocab, merges = Path(bpe_dir) / "vocab.json", Path(bpe_dir) / "merges.txt"
    else:
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer(add_prefix_space=True)
        bpe.train_from_iterator(
            corpus,
            vocab_size=vocab_size,
            min_frequency=1,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            show_progress=False,
        )
        bpe.save_model(str(tmp))
        vocab, merges = tmp / "vocab.json", tmp / "merges.txt"
    entity_vocab = tmp / "entity_vocab.json"
    entity_vocab.write_text(json.dumps(LUKE_ENTITY_VOCAB))
    return LukeTokenizer(
        str(vocab),
        str(merges),
        str(entity_vocab),
        task="entity_span_classification",
        add_prefix_space=True,
        max_entity_length=32,
        max_mention_length=30,
    )


def _mluke_tokenizer(tmp: Path, corpus: Sequence[str], vocab_size: int):
    import sentencepiece as spm
    from transformers import MLukeTokenizer

    prefix = tmp / "sentencepiece.bpe"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    entity_vocab = tmp / "entity_vocab.json"
    entity_vocab.write_text(json.dumps(MLUKE_ENTITY_VOCAB))
    return MLukeTokenizer(
        str(prefix) + ".model",
        str(entity_vocab),
        task="entity_span_classification",
        max_entity_length=32,
        max_mention_length=30,
    )
