"""Word-by-word subword tokenization with the checkpoint's own tokenizer.

The checkpoint tokenizers (`LukeTokenizer`, `MLukeTokenizer`) are slow, pure-Python
tokenizers. For speed, new word types are encoded in one batch with an equivalent fast
tokenizer (Hugging Face `tokenizers`) built in memory from the same vocabulary:

* `LukeTokenizer`: byte-level BPE from the same `encoder` and `bpe_ranks`, with the same
  `add_prefix_space` (what `RobertaTokenizerFast` builds from vocab.json and merges.txt).
* `MLukeTokenizer`: the SentencePiece model converted as transformers' `XLMRobertaConverter`
  does (same vocabulary layout, normalizer, `▁` prefix), read without protobuf.

Words for which the two may legitimately differ go through the slow tokenizer: words holding
an added-token string (`<s>`, `<mask>`, `<ent>`, ...), whitespace, control or format
characters, private-use, surrogate or (for this Python's Unicode database) unassigned code
points, and, for SentencePiece, the `▁` marker itself and words that NFKC normalization changes
(`tokenizers`' precompiled normalizer drops a combining mark after a compatibility character,
e.g. "\u24e2\u0308", which SentencePiece keeps). A fast tokenizer that cannot be built, or
that disagrees with the slow one on a probe list when built, is not used at all.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import unicodedata
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from transformers import PreTrainedTokenizerBase

from .checkpoint import CheckpointError
from .encoding import SpecialIds

logger = logging.getLogger(__name__)

# Words on which the fast tokenizer must agree with the slow one before it is used.
PROBE_WORDS = (
    "EU",
    "rejects",
    "German",
    "1996-08-22",
    "3,000",
    "12.5",
    "don't",
    "'s",
    "(",
    "--",
    '"',
    "...",
    "Beyoncé",
    "Zürich",
    "São",
    "naïve",
    "Ελλάδα",
    "Москва",
    "مرحبا",
    "हिन्दी",
    "日本語",
    "한국어",
    "😀",
    "👍🏽",
    "a" * 40,
    "Donaudampfschifffahrtsgesellschaftskapitän",
)
# Word types kept in a WordTokenizer's cache (200-330 bytes each, measured): a stream of new
# vocabulary cannot grow memory beyond a few tens of MB, and all CoNLL-2003 word types fit.
CACHE_SIZE = 50_000
# The fast tokenizers encode batches on a thread pool that does not survive a fork. When a
# process forks after using it, `tokenizers` switches it off in the child and prints a warning
# there, once per worker of `nlp.pipe(n_process=...)`. Setting the variable before such a fork
# gives the child what tokenizers would choose anyway, without the warning; the parent gets
# its environment back right after (`_ForkGuard`).
PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"


class WordTokenizer:
    """Tokenize words one at a time, as the recipe does, with a bounded cache of word types.

    Each word goes through the checkpoint tokenizer on its own, so its prefix-space behaviour
    (`add_prefix_space` for LUKE's byte-level BPE, the `▁` marker for mLUKE's SentencePiece)
    applies to every word. Whitespace-only words get no subwords, so they can never bound a
    candidate span. Word types not seen before are encoded in one batch by an equivalent fast
    tokenizer where one can be built (see the module docstring); the result is the same.

    tokenizer (PreTrainedTokenizerBase): The checkpoint tokenizer.
    use_fast (bool): Use a fast tokenizer for uncached words when one can be built.
    cache_size (int): Most word types kept; the least recently used ones are dropped first.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        use_fast: bool = True,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
        self.tokenizer = tokenizer
        self.use_fast = use_fast
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tuple[int, ...]] = OrderedDict()
        self._fast: Any = None
        self._fast_built = False
        self._special: Optional[re.Pattern] = None
        self._extra_special: Tuple[str, ...] = ()
        # Whether words that NFKC changes go to the slow tokenizer (SentencePiece).
        self._nfkc_slow = False

    def __getstate__(self) -> Dict[str, Any]:
        # The fast tokenizer is rebuilt on demand rather than pickled.
        state = self.__dict__.copy()
        state["_fast"] = None
        state["_fast_built"] = False
        return state

    @property
    def fast(self) -> Any:
        """The `tokenizers.Tokenizer` used for uncached words, or None (slow tokenizer only)."""
        if not self._fast_built:
            self._fast_built = True
            self._fast = self._build_fast() if self.use_fast else None
        return self._fast

    def __call__(self, words: Sequence[str]) -> List[Tuple[int, ...]]:
        """Subword ids of each word.

        words (Sequence[str]): The words (spaCy token texts).
        RETURNS (List[Tuple[int, ...]]): One tuple of ids per word.
        """
        cache = self._cache
        known: Dict[str, Tuple[int, ...]] = {}
        new: List[str] = []
        for word in dict.fromkeys(words):
            ids = cache.get(word)
            if ids is None:
                new.append(word)
            else:
                cache.move_to_end(word)
                known[word] = ids
        if new:
            encoded = dict(zip(new, self.encode_batch(new)))
            known.update(encoded)
            cache.update(encoded)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return [known[word] for word in words]

    def encode(self, word: str) -> Tuple[int, ...]:
        """Subword ids of one word with the checkpoint (slow) tokenizer, uncached.

        This is the reference that the fast path reproduces.
        """
        if not word.strip():
            return ()
        tok = self.tokenizer
        return tuple(tok.convert_tokens_to_ids(tok.tokenize(word)))

    def encode_batch(self, words: Sequence[str]) -> List[Tuple[int, ...]]:
        """Subword ids of each word, uncached: one fast-tokenizer call for all words that the
        fast tokenizer handles exactly, the slow tokenizer for the others."""
        fast = self.fast
        if fast is None:
            return [self.encode(word) for word in words]
        out: List[Tuple[int, ...]] = [()] * len(words)
        batch_words: List[str] = []
        batch_index: List[int] = []
        for i, word in enumerate(words):
            if not word.strip():
                continue
            if self.needs_slow(word):
                out[i] = self.encode(word)
            else:
                batch_words.append(word)
                batch_index.append(i)
        if batch_words:
            # encode_batch_fast (tokenizers >= 0.21) skips the character offsets.
            encode = getattr(fast, "encode_batch_fast", fast.encode_batch)
            _fork_guard.used = True
            encodings = encode(batch_words, add_special_tokens=False)
            for i, encoding in zip(batch_index, encodings):
                out[i] = tuple(encoding.ids)
        return out

    def needs_slow(self, word: str) -> bool:
        """Whether a word must go through the slow tokenizer (see the module docstring)."""
        if self._special is None:
            self._special = _special_pattern(self.tokenizer, self._extra_special)
        if self._special.search(word):
            return True
        if self._nfkc_slow and not unicodedata.is_normalized("NFKC", word):
            return True
        # Not printable: Unicode "Other" (control, format, surrogate, private-use, unassigned)
        # or "Separator" characters, the ASCII space excepted, which is checked on its own.
        return not word.isprintable() or " " in word

    def _build_fast(self) -> Any:
        tok = self.tokenizer
        try:
            if _is_luke(tok):
                fast = build_fast_bpe(tok)
            elif _is_mluke(tok):
                fast, self._extra_special = build_fast_sentencepiece(tok)
                self._nfkc_slow = True
            else:
                return None
        except Exception as err:  # any failure means: use the slow tokenizer
            logger.info("luke_ner: no fast tokenizer (%s); using the slow one.", err)
            return None
        self._special = None
        mismatches = [
            w
            for w in PROBE_WORDS
            if not self.needs_slow(w)
            and tuple(fast.encode(w, add_special_tokens=False).ids) != self.encode(w)
        ]
        if mismatches:
            logger.warning(
                "luke_ner: the fast tokenizer differs from %s on %r; using the slow one.",
                type(tok).__name__,
                mismatches[:5],
            )
            return None
        return fast


class _ForkGuard:
    """Sets TOKENIZERS_PARALLELISM=false across a fork once a fast tokenizer has been used,
    unless the user has set it."""

    def __init__(self) -> None:
        self.used = False
        self._set = False

    def before(self) -> None:
        if self.used and PARALLELISM_ENV not in os.environ:
            os.environ[PARALLELISM_ENV] = "false"
            self._set = True

    def after_in_parent(self) -> None:
        if self._set:
            os.environ.pop(PARALLELISM_ENV, None)
            self._set = False


_fork_guard = _ForkGuard()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_fork_guard.before, after_in_parent=_fork_guard.after_in_parent)


def entity_ids(tokenizer: Any, name: str = "") -> Tuple[int, int]:
    """The [MASK] and [PAD] ids of the checkpoint's entity vocabulary."""
    vocab = getattr(tokenizer, "entity_vocab", None)
    if not vocab or "[MASK]" not in vocab:
        raise CheckpointError(
            f"The tokenizer of '{name}' has no entity vocabulary with a [MASK] entry "
            "(entity_vocab.json); luke_ner needs the checkpoint's LukeTokenizer or "
            "MLukeTokenizer with its entity_vocab.json."
        )
    mask_id = getattr(tokenizer, "entity_mask_token_id", vocab["[MASK]"])
    return mask_id, getattr(tokenizer, "entity_pad_token_id", vocab.get("[PAD]", 0))


def special_ids(tokenizer: Any) -> SpecialIds:
    """The special token and entity ids that `encoding.collate` writes, from the tokenizer."""
    mask_id, pad_entity_id = entity_ids(tokenizer)
    return SpecialIds(
        cls=tokenizer.cls_token_id,
        sep=tokenizer.sep_token_id,
        pad=tokenizer.pad_token_id,
        mask_entity=mask_id,
        pad_entity=pad_entity_id,
    )


def _is_luke(tok: Any) -> bool:
    from transformers import LukeTokenizer

    return isinstance(tok, LukeTokenizer)


def _is_mluke(tok: Any) -> bool:
    try:
        from transformers import MLukeTokenizer
    except ImportError:  # sentencepiece missing
        return False
    return isinstance(tok, MLukeTokenizer)


def _special_pattern(tok: Any, extra: Sequence[str] = ()) -> re.Pattern:
    """A regex that finds any added-token string (and `extra` strings) in a word."""
    strings = set(getattr(tok, "added_tokens_encoder", {}) or {})
    strings.update(str(t) for t in getattr(tok, "all_special_tokens", ()))
    strings.update(extra)
    strings.discard("")
    if not strings:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


def build_fast_bpe(tok: Any) -> Any:
    """A `tokenizers.Tokenizer` equivalent to a `LukeTokenizer`'s word tokenization.

    Byte-level BPE with the same vocabulary, merges and `add_prefix_space`, and no special
    tokens or post-processor: what `RobertaTokenizerFast(vocab.json, merges.txt)` does, built
    from the loaded tokenizer so no files are needed.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    encoder: Dict[str, int] = tok.encoder
    missing = [c for c in tok.byte_encoder.values() if c not in encoder]
    if missing:
        raise ValueError(f"{len(missing)} byte symbols are not in the vocabulary")
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.__getitem__)
    fast = Tokenizer(models.BPE(vocab=dict(encoder), merges=[tuple(m) for m in merges]))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=bool(tok.add_prefix_space), use_regex=True
    )
    return fast


def build_fast_sentencepiece(tok: Any) -> Tuple[Any, Tuple[str, ...]]:
    """A `tokenizers.Tokenizer` equivalent to an `MLukeTokenizer`'s word tokenization.

    Converts the SentencePiece model the way transformers' `XLMRobertaConverter` does
    (fairseq ids: `<s> <pad> </s> <unk>`, then the pieces from id 3 on, then `<mask>`), but
    reads the model proto without protobuf.

    RETURNS (Tuple[Tokenizer, Tuple[str, ...]]): The tokenizer, and strings (user-defined
        pieces, `▁`) whose words must go through the slow tokenizer.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import generate_merges

    proto = _read_sentencepiece_proto(tok.sp_model.serialized_model_proto())
    pieces = proto["pieces"]
    head = [p["piece"] for p in pieces[:3]]
    if head != ["<unk>", "<s>", "</s>"] or getattr(tok, "fairseq_offset", None) != 1:
        raise ValueError(f"unexpected SentencePiece layout {head}")
    if proto["model_type"] not in (1, 2):
        raise ValueError(f"SentencePiece model type {proto['model_type']} is not supported")
    byte_fallback = proto["byte_fallback"]
    vocab_scores = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab_scores += [(p["piece"], p["score"]) for p in pieces[3:]]
    vocab_scores += [("<mask>", 0.0)]
    if len(vocab_scores) != len(dict(vocab_scores)):
        raise ValueError("duplicate pieces in the SentencePiece vocabulary")
    unk_id = 3
    if proto["model_type"] == 1:
        model = models.Unigram(vocab_scores, unk_id=unk_id, byte_fallback=byte_fallback)
    else:
        sp_vocab = {p["piece"]: i for i, p in enumerate(pieces)}
        merges = generate_merges(sp_vocab, vocab_scores)
        model = models.BPE(
            {piece: i for i, (piece, _) in enumerate(vocab_scores)},
            merges,
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=byte_fallback,
            dropout=None,
        )
    fast = Tokenizer(model)
    steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
    if proto["precompiled_charsmap"]:
        steps.insert(0, normalizers.Precompiled(proto["precompiled_charsmap"]))
    fast.normalizer = normalizers.Sequence(steps)
    fast.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always" if proto["add_dummy_prefix"] else "never"
    )
    # User-defined pieces (type 4) are matched anywhere by SentencePiece: leave them to it.
    extra = tuple(p["piece"] for p in pieces if p["type"] == 4) + ("▁",)
    return fast, extra


def _read_sentencepiece_proto(data: bytes) -> Dict[str, Any]:
    """The fields of a SentencePiece `ModelProto` that the conversion needs.

    pieces (field 1: piece 1, score 2, type 3), trainer_spec (2: model_type 3,
    byte_fallback 35), normalizer_spec (3: precompiled_charsmap 2, add_dummy_prefix 3).
    """
    out: Dict[str, Any] = {
        "pieces": [],
        "model_type": 1,
        "byte_fallback": False,
        "precompiled_charsmap": b"",
        "add_dummy_prefix": True,
    }
    for number, value in _proto_fields(data):
        if number == 1:
            piece = {"piece": "", "score": 0.0, "type": 1}
            for n, v in _proto_fields(value):
                if n == 1:
                    piece["piece"] = v.decode("utf-8")
                elif n == 2:
                    piece["score"] = struct.unpack("<f", v)[0]
                elif n == 3:
                    piece["type"] = v
            out["pieces"].append(piece)
        elif number == 2:
            for n, v in _proto_fields(value):
                if n == 3:
                    out["model_type"] = v
                elif n == 35:
                    out["byte_fallback"] = bool(v)
        elif number == 3:
            for n, v in _proto_fields(value):
                if n == 2:
                    out["precompiled_charsmap"] = bytes(v)
                elif n == 3:
                    out["add_dummy_prefix"] = bool(v)
    return out


def _proto_fields(data: bytes) -> Iterator[Tuple[int, Any]]:
    """(field number, value) of each field of a protobuf message (wire format)."""
    i, n = 0, len(data)
    while i < n:
        key, i = _varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _varint(data, i)
        elif wire_type == 1:
            value, i = data[i : i + 8], i + 8
        elif wire_type == 2:
            length, i = _varint(data, i)
            value, i = data[i : i + length], i + length
        elif wire_type == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, value


def _varint(data: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
