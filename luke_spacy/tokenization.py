"""Word-by-word subword tokenization with the checkpoint's own tokenizer."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from transformers import PreTrainedTokenizerBase


class WordTokenizer:
    """Tokenize words one at a time, as the recipe does, with a cache per word type.

    Each word goes through the checkpoint tokenizer on its own, so its prefix-space behaviour
    (`add_prefix_space` for LUKE's byte-level BPE, the `▁` marker for mLUKE's SentencePiece)
    applies to every word. Whitespace-only words get no subwords, so they can never bound a
    candidate span.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._cache: Dict[str, Tuple[int, ...]] = {}

    def __call__(self, words: Sequence[str]) -> List[Tuple[int, ...]]:
        """Subword ids of each word.

        words (Sequence[str]): The words (spaCy token texts).
        RETURNS (List[Tuple[int, ...]]): One tuple of ids per word.
        """
        cache = self._cache
        out = []
        for word in words:
            ids = cache.get(word)
            if ids is None:
                ids = self.encode(word)
                cache[word] = ids
            out.append(ids)
        return out

    def encode(self, word: str) -> Tuple[int, ...]:
        """Subword ids of one word, uncached."""
        if not word.strip():
            return ()
        tok = self.tokenizer
        return tuple(tok.convert_tokens_to_ids(tok.tokenize(word)))
