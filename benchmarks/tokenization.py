"""Slow versus fast word tokenization on every distinct word of CoNLL-2003.

    python benchmarks/tokenization.py --model DIR [--conll-dir DIR] [--rounds 3] [--out F.json]

Times `WordTokenizer.encode` word by word (the checkpoint's slow tokenizer) and
`WordTokenizer.encode_batch` (one fast-tokenizer call) on all distinct words of eng.train,
eng.testa and eng.testb, each round on fresh tokenizers (no warm caches), and checks that
both give the same ids.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import read_conll, write_json  # noqa: E402

DEFAULT_CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (its tokenizer)")
    parser.add_argument("--conll-dir", default=str(DEFAULT_CONLL))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from luke_spacy.tokenization import WordTokenizer

    words = list(
        dict.fromkeys(
            w
            for name in ("eng.train", "eng.testa", "eng.testb")
            for doc in read_conll(Path(args.conll_dir) / name)
            for sentence in doc
            for w in sentence
        )
    )
    slow_times, fast_times, build_times = [], [], []
    same = True
    for _ in range(args.rounds):
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        wt = WordTokenizer(tokenizer)
        start = time.perf_counter()
        slow = [wt.encode(w) for w in words]
        slow_times.append(time.perf_counter() - start)

        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        wt = WordTokenizer(tokenizer)
        start = time.perf_counter()
        assert wt.fast is not None, "no fast tokenizer could be built"
        build_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        fast = wt.encode_batch(words)
        fast_times.append(time.perf_counter() - start)
        same = same and slow == fast
    out = {
        "words": len(words),
        "tokenizer": type(tokenizer).__name__,
        "slow_seconds": min(slow_times),
        "fast_seconds": min(fast_times),
        "fast_build_seconds": min(build_times),
        "speedup": round(min(slow_times) / min(fast_times), 2),
        "identical": same,
        "all_rounds": {"slow": slow_times, "fast": fast_times, "build": build_times},
    }
    print(
        f"{len(words)} distinct words: slow {out['slow_seconds']:.3f} s, fast "
        f"{out['fast_seconds']:.3f} s (+{out['fast_build_seconds']:.3f} s to build), "
        f"x{out['speedup']}, identical: {same}"
    )
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
