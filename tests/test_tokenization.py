"""The fast word tokenization gives exactly the checkpoint tokenizer's subwords."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
import unicodedata
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import shared_path
from transformers import AutoTokenizer

from luke_spacy import tokenization
from luke_spacy.random_model import SAMPLE_TEXT
from luke_spacy.tokenization import WordTokenizer

CONLL_FILES = ("eng.train", "eng.testa", "eng.testb")

# Words where fast and slow tokenizers are most likely to part: special-token strings,
# whitespace of every kind, control/format characters, emoji sequences, mixed scripts,
# compatibility characters that normalizers change, and very long words.
EDGE_WORDS = [
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<mask>",
    "<ent>",
    "<ent2>",
    "a<s>b",
    "x<mask>",
    "<mask>y",
    "<ent2>z",
    "<<s>>",
    "<",
    "s>",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇩🇪",
    "❤️",
    "日本語テキスト",
    "東京2020",
    "한국어",
    "Ελλάδα",
    "Москва-2",
    "مرحبا",
    "עברית",
    "हिन्दी",
    "ภาษาไทย",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "ﬁne",
    "Å",
    "A\u030a",
    "½",
    "Ⅻ",
    "①",
    "Straße",
    "İstanbul",
    "e\u0301",
    "a\u200bb",
    "\u200b",
    "\ufeffword",
    "soft\u00adhyphen",
    "x\u00a0y",
    "\u00a0x",
    "x\u3000",
    "\tx",
    "x\ny",
    "x y",
    " x",
    "x ",
    "  ",
    " ",
    "\n",
    "\t\n",
    "",
    "\x00",
    "a\x7fb",
    "\x1cq",
    "\U000f0000",
    "\U000e0041",
    "\u0378",
    "▁",
    "a▁b",
    "'s",
    "'S",
    "n't",
    "''",
    "``",
    "--",
    "...",
    "(",
    "1,234.56",
    "1996-08-22",
    "a" * 2000,
    "Donaudampfschifffahrtsgesellschaftskapitänswitwe" * 20,
    "ab" * 700 + "日本" * 300 + "😀" * 100,
    "http://www.example.com/a?b=c&d=e",
    "user@example.com",
    "#hashtag",
    "@mention",
    "C++",
    "$1.5bn",
    "€",
    "£",
]


def conll_words(*files: str) -> List[str]:
    """Distinct words of CoNLL files, in first-seen order (skip the test when absent)."""
    words = {}
    for name in files:
        with open(shared_path("conll2003", name), encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] != "-DOCSTART-":
                    words[parts[0]] = None
    return list(words)


@pytest.fixture(scope="module")
def luke_tokenizer(tmp_path_factory):
    """The checkpoint's own LukeTokenizer files (RoBERTa vocab, tokenizer_config.json with
    add_prefix_space), plus the 4-entry entity vocabulary that the download lacks here."""
    src = shared_path("luke-large-finetuned-conll-2003")
    dst = tmp_path_factory.mktemp("luke_tok")
    for name in (
        "config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ):
        shutil.copy(src / name, dst / name)
    (dst / "entity_vocab.json").write_text(
        json.dumps({"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "[MASK2]": 3})
    )
    tok = AutoTokenizer.from_pretrained(str(dst), local_files_only=True)
    assert type(tok).__name__ == "LukeTokenizer" and tok.add_prefix_space
    return tok


@pytest.fixture(scope="module")
def mluke_tokenizer(tiny_mluke: Path):
    tok = AutoTokenizer.from_pretrained(str(tiny_mluke), local_files_only=True)
    assert type(tok).__name__ == "MLukeTokenizer"
    return tok


def require_fast(wt: WordTokenizer) -> None:
    """Skip where this transformers version cannot build the fast tokenizer (older ones cannot
    convert MLukeTokenizer); the component then uses the slow path, which is exact."""
    if wt.fast is None:
        pytest.skip("no fast tokenizer for this tokenizer in this transformers version")


def assert_same(wt: WordTokenizer, words: List[str]) -> None:
    """Batch (fast) encoding equals the slow tokenizer word by word; report all mismatches."""
    fast = wt.encode_batch(words)
    slow = [wt.encode(w) for w in words]
    diff = [(w, s, f) for w, s, f in zip(words, slow, fast) if s != f]
    assert not diff, f"{len(diff)} of {len(words)} words differ, e.g. {diff[:5]}"


def assert_raw_fast_same(wt: WordTokenizer, words: List[str]) -> None:
    """Words the fast tokenizer is trusted with give the slow ids through it directly."""
    trusted = [w for w in words if w.strip() and not wt.needs_slow(w)]
    assert trusted
    ids = [tuple(e.ids) for e in wt.fast.encode_batch(trusted, add_special_tokens=False)]
    diff = [(w, wt.encode(w), i) for w, i in zip(trusted, ids) if wt.encode(w) != i]
    assert not diff, diff[:5]


def test_fast_equals_slow_on_all_conll_words(luke_tokenizer):
    words = conll_words(*CONLL_FILES)
    assert len(words) > 25000
    wt = WordTokenizer(luke_tokenizer)
    assert wt.fast is not None
    # No CoNLL word needs the slow path: the comparison below is really fast vs slow.
    assert not [w for w in words if wt.needs_slow(w)]
    assert_same(wt, words)


def test_fast_equals_slow_with_tiny_real_bpe_fixture(tiny_luke_real_bpe):
    tok = AutoTokenizer.from_pretrained(str(tiny_luke_real_bpe), local_files_only=True)
    wt = WordTokenizer(tok)
    assert wt.fast is not None
    words = conll_words("eng.testb")
    assert_same(wt, words + EDGE_WORDS)


def test_edge_words_luke(luke_tokenizer):
    wt = WordTokenizer(luke_tokenizer)
    assert_same(wt, EDGE_WORDS)
    assert_raw_fast_same(wt, EDGE_WORDS)
    for special in ("<s>", "<mask>", "<ent>", "a<s>b"):
        assert wt.needs_slow(special)
    assert wt(["<mask>"]) == [(luke_tokenizer.mask_token_id,)]


def test_edge_words_mluke(mluke_tokenizer):
    wt = WordTokenizer(mluke_tokenizer)
    require_fast(wt)
    assert_same(wt, EDGE_WORDS)
    assert_raw_fast_same(wt, EDGE_WORDS)


def test_mluke_word_sample(mluke_tokenizer):
    words = [w for line in SAMPLE_TEXT for w in line.split()]
    try:
        conll = conll_words(*CONLL_FILES)
    except pytest.skip.Exception:
        conll = []
    words += random.Random(0).sample(conll, min(3000, len(conll)))
    wt = WordTokenizer(mluke_tokenizer)
    require_fast(wt)
    assert_same(wt, words)


def test_tiny_bpe_edge_words(tiny_luke):
    # A BPE trained on a few sentences: most characters end as single-byte symbols.
    wt = WordTokenizer(AutoTokenizer.from_pretrained(str(tiny_luke), local_files_only=True))
    assert wt.fast is not None
    assert_same(wt, EDGE_WORDS + [w for line in SAMPLE_TEXT for w in line.split()])


def test_whitespace_words_have_no_subwords(luke_tokenizer, mluke_tokenizer):
    for tok in (luke_tokenizer, mluke_tokenizer):
        wt = WordTokenizer(tok)
        assert wt(["", " ", "\n", "\t \n", "\u00a0", "\u3000"]) == [()] * 6


def test_call_caches_and_batches_new_types(luke_tokenizer, monkeypatch):
    wt = WordTokenizer(luke_tokenizer)
    calls = []
    original = wt.encode_batch

    def spy(words):
        calls.append(list(words))
        return original(words)

    monkeypatch.setattr(wt, "encode_batch", spy)
    first = wt(["EU", "rejects", "EU", "German", "<s>"])
    assert calls == [["EU", "rejects", "German", "<s>"]]
    assert first[0] == first[2] == wt.encode("EU")
    assert wt(["German", "EU"]) == [wt.encode("German"), wt.encode("EU")]
    assert len(calls) == 1
    wt(["German", "call", "to", "call"])
    assert calls[1] == ["call", "to"]


def test_one_fast_call_per_batch(luke_tokenizer):
    wt = WordTokenizer(luke_tokenizer)
    fast = wt.fast

    class Spy:
        calls = 0

        def encode_batch_fast(self, words, add_special_tokens=False):
            Spy.calls += 1
            # encode_batch_fast is tokenizers >= 0.21; older ones have encode_batch only
            encode = getattr(fast, "encode_batch_fast", fast.encode_batch)
            return encode(words, add_special_tokens=add_special_tokens)

        encode_batch = encode_batch_fast

    wt._fast = Spy()
    ids = wt(["a", "b", "c", "<ent>", "d", "a"])
    assert Spy.calls == 1
    assert ids == [wt.encode(w) for w in ["a", "b", "c", "<ent>", "d", "a"]]


def test_slow_only(luke_tokenizer):
    wt = WordTokenizer(luke_tokenizer, use_fast=False)
    assert wt.fast is None
    assert wt(["EU", "Beyoncé", "<s>"]) == [wt.encode(w) for w in ["EU", "Beyoncé", "<s>"]]


def test_falls_back_when_fast_cannot_be_built(luke_tokenizer, monkeypatch):
    def broken(tok):
        raise ValueError("no")

    monkeypatch.setattr(tokenization, "build_fast_bpe", broken)
    wt = WordTokenizer(luke_tokenizer)
    assert wt.fast is None
    assert wt(["EU", "rejects"]) == [wt.encode("EU"), wt.encode("rejects")]


def test_falls_back_when_probe_differs(luke_tokenizer, monkeypatch, caplog):
    real = tokenization.build_fast_bpe

    def off_by_one_vocab(tok):
        fast = real(tok)
        fast.pre_tokenizer = __import__("tokenizers").pre_tokenizers.ByteLevel(
            add_prefix_space=False
        )
        return fast

    monkeypatch.setattr(tokenization, "build_fast_bpe", off_by_one_vocab)
    wt = WordTokenizer(luke_tokenizer)
    with caplog.at_level("WARNING"):
        assert wt.fast is None
    assert "differs" in caplog.text
    assert wt(["EU"]) == [wt.encode("EU")]


def test_other_tokenizers_use_slow_path(luke_tokenizer):
    class Other:
        added_tokens_encoder = {}
        all_special_tokens = []

        def tokenize(self, word):
            return list(word)

        def convert_tokens_to_ids(self, tokens):
            return [ord(t) for t in tokens]

    wt = WordTokenizer(Other())
    assert wt.fast is None
    assert wt(["ab", " "]) == [(97, 98), ()]


def test_pickle_drops_fast_tokenizer(luke_tokenizer):
    wt = WordTokenizer(luke_tokenizer)
    wt(["EU"])
    assert wt.fast is not None
    clone = pickle.loads(pickle.dumps(wt))
    assert clone._fast is None
    assert clone(["EU", "rejects"]) == wt(["EU", "rejects"])
    assert clone.fast is not None


@lru_cache(maxsize=1)
def chars_by_category() -> Dict[str, List[str]]:
    """Every code point of this Python's Unicode database, by general category (no surrogates:
    a str with one cannot be encoded, and spaCy never makes such a token from UTF-8 text)."""
    table = defaultdict(list)
    for point in range(sys.maxunicode + 1):
        char = chr(point)
        category = unicodedata.category(char)
        if category != "Cs":
            table[category].append(char)
    return dict(table)


def fuzz_words(seed: int, n: int) -> List[str]:
    """Random words of 1-5 characters over all Unicode categories (printable ones weighted
    up), a third of the characters followed by a combining mark."""
    table = chars_by_category()
    categories = sorted(table)
    weights = [4 if c[0] in "LMNPS" else 1 for c in categories]
    rng = random.Random(seed)
    words = []
    for _ in range(n):
        chars = []
        for category in rng.choices(categories, weights, k=rng.randint(1, 5)):
            chars.append(rng.choice(table[category]))
            if rng.random() < 0.3:
                chars.append(rng.choice(table[rng.choice(("Mn", "Mc", "Me"))]))
        words.append("".join(chars))
    return list(dict.fromkeys(words))


def fuzz_tokenizers(request) -> List[WordTokenizer]:
    tokenizers = []
    for fixture in ("tiny_luke_real_bpe", "tiny_mluke"):
        path = request.getfixturevalue(fixture)
        wt = WordTokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
        if wt.fast is not None or fixture == "tiny_luke_real_bpe":  # see require_fast
            tokenizers.append(wt)
    assert tokenizers[0].fast is not None
    return tokenizers


def test_compatibility_char_with_combining_mark(mluke_tokenizer):
    # fast: (268,), slow: (268, 208, 140) before such words went to the slow tokenizer
    wt = WordTokenizer(mluke_tokenizer)
    require_fast(wt)
    assert_same(wt, ["\u24e2\u0308", "\ufe34\u05af", "\u2170\u06e0", "x\u24e2\u0308y"])


def test_fuzz_fast_equals_slow(request):
    words = fuzz_words(seed=0, n=3000)
    for wt in fuzz_tokenizers(request):
        assert_same(wt, words)
        assert sum(not wt.needs_slow(w) for w in words) > len(words) // 3


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_fast_equals_slow_large(request, seed):
    words = fuzz_words(seed=seed, n=30000)
    for wt in fuzz_tokenizers(request):
        assert_same(wt, words)


def test_cache_is_bounded_and_results_identical(mluke_tokenizer):
    wt = WordTokenizer(mluke_tokenizer, cache_size=50)
    reference = WordTokenizer(mluke_tokenizer, use_fast=False)
    rng = random.Random(0)
    for _ in range(40):
        # a stream of fresh words, with a few frequent ones that must stay cached
        words = [f"w{rng.randrange(10**6)}x" for _i in range(30)] + ["the", "EU", "the"]
        assert wt(words) == [reference.encode(w) for w in words]
        assert len(wt._cache) <= 50
        assert "the" in wt._cache and "EU" in wt._cache
    # a call with more new types than the cache holds still returns every word
    many = [f"n{i}" for i in range(120)]
    assert wt(many) == [reference.encode(w) for w in many]
    assert list(wt._cache) == many[-50:]
    with pytest.raises(ValueError, match="cache_size"):
        WordTokenizer(mluke_tokenizer, cache_size=0)


def test_cache_drops_the_least_recently_used(luke_tokenizer):
    wt = WordTokenizer(luke_tokenizer, cache_size=3)
    wt(["a", "b", "c"])
    wt(["a"])  # a is used again: b is now the least recently used
    wt(["d"])
    assert list(wt._cache) == ["c", "a", "d"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_fork_after_fast_tokenization_prints_no_warning(tiny_luke, capfd, monkeypatch):
    """`nlp.pipe(n_process=2)` forks workers after the parent has tokenized: the tokenizers
    library used to print its "just got forked" warning in every worker."""
    monkeypatch.delenv(tokenization.PARALLELISM_ENV, raising=False)
    wt = WordTokenizer(AutoTokenizer.from_pretrained(str(tiny_luke)))
    require_fast(wt)
    expected = [wt.encode(f"word{i}") for i in range(300)]
    assert wt([f"word{i}" for i in range(300)]) == expected  # the fast path ran
    pid = os.fork()
    if pid == 0:  # a worker: tokenizes new words, then leaves without Python's clean-up
        code = 1
        try:
            code = 0 if wt([f"word{i}" for i in range(300, 600)])[0] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    out, err = capfd.readouterr()
    assert "forked" not in out + err
    assert tokenization.PARALLELISM_ENV not in os.environ  # the parent keeps its threads
