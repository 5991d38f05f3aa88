"""What a packaged luke_ner pipeline declares: its requirements and where its model comes from.

`spacy package` takes a pipeline's requirements from `nlp.meta["requirements"]` and adds a
plain version range for each package whose registered functions the config uses (here
`luke-spacy>=0.1.0,<0.2.0`), skipping packages the meta already names. An mLUKE checkpoint's
tokenizer also needs sentencepiece, luke-spacy's `[mluke]` extra, so such a pipeline must ask
for `luke-spacy[mluke]` in its meta, or its package installs but does not load.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Dict, Iterable, List, Optional, Sequence

from packaging.requirements import Requirement
from spacy.util import get_minor_version_range

DISTRIBUTION = "luke-spacy"
# luke-spacy's extra that a checkpoint's tokenizer class needs.
TOKENIZER_EXTRAS = {"MLukeTokenizer": "mluke"}
HUB_URL = "https://huggingface.co/{}"


def luke_spacy_requirement(
    tokenizer_classes: Iterable[str], release: Optional[str] = None, extras: Iterable[str] = ()
) -> str:
    """The requirement on luke-spacy of a pipeline whose checkpoints use these tokenizers.

    tokenizer_classes (Iterable[str]): Tokenizer class names, e.g. "MLukeTokenizer".
    release (Optional[str]): luke-spacy's version; the installed one when None.
    extras (Iterable[str]): Further extras to ask for.
    RETURNS (str): E.g. "luke-spacy[mluke]>=0.1.0,<0.2.0", the version range as spaCy writes
        it for third-party packages.
    """
    if release is None:
        release = version(DISTRIBUTION)
    wanted = {TOKENIZER_EXTRAS[c] for c in tokenizer_classes if c in TOKENIZER_EXTRAS}
    wanted.update(extras)
    name = DISTRIBUTION + (f"[{','.join(sorted(wanted))}]" if wanted else "")
    return name + get_minor_version_range(release)


def record_requirements(
    meta: Dict[str, Any], tokenizer_classes: Iterable[str], extras: Iterable[str] = ()
) -> None:
    """Put luke-spacy's requirement (with the extras the tokenizers need) in a pipeline meta,
    in place of any other requirement on luke-spacy, whose extras are kept (one call per
    luke_ner component); for `nlp.meta`, so that `spacy package` writes it into the package.

    meta (Dict[str, Any]): The meta, changed in place.
    tokenizer_classes (Iterable[str]): The tokenizer class names of the pipeline's checkpoints.
    extras (Iterable[str]): Extras the component needs besides, e.g. "onnx" for its backend.
    """
    others, extras = [], set(extras)
    for req in meta.get("requirements", []):
        parsed = Requirement(req)
        if _canonical(parsed.name) == DISTRIBUTION:
            extras.update(parsed.extras)
        else:
            others.append(req)
    try:
        requirement = luke_spacy_requirement(tokenizer_classes, extras=extras)
    except PackageNotFoundError:  # running from a source tree that is not installed
        return
    meta["requirements"] = [*others, requirement]


def checkpoint_meta(
    checkpoints: Sequence[str],
    tokenizer_classes: Iterable[str],
    requirements: Sequence[str] = (),
    author: str = "",
) -> Dict[str, Any]:
    """Meta fields for `spacy package --meta-path` that say which checkpoints the pipeline
    wraps: its model, and so its license, come from them.

    checkpoints (Sequence[str]): The checkpoint names (hub ids or folders) of its luke_ner
        components.
    tokenizer_classes (Iterable[str]): Their tokenizer class names.
    requirements (Sequence[str]): The pipeline's own requirements (`nlp.meta`), kept.
    author (str): The package's author; by default the checkpoints' hub owners.
    RETURNS (Dict[str, Any]): description, author, url, license, sources and requirements.
    """
    names = ", ".join(checkpoints)
    hub = [name for name in checkpoints if is_hub_id(name)]
    owners = sorted({name.split("/")[0] for name in hub})
    sources = [
        {
            "name": name,
            "url": HUB_URL.format(name) if name in hub else "",
            "license": "see the checkpoint's model card",
            "author": name.split("/")[0] if name in hub else "",
        }
        for name in checkpoints
    ]
    meta: Dict[str, Any] = {
        "description": (
            f"LUKE span-based named entity recognition (luke_ner, luke-spacy) with the "
            f"checkpoint {names}."
        ),
        "author": author or (f"{', '.join(owners)} (checkpoint)" if owners else ""),
        "url": HUB_URL.format(hub[0]) if len(hub) == 1 else "",
        "license": f"the license of the checkpoint {names}",
        "sources": sources,
        "requirements": list(requirements),
    }
    record_requirements(meta, tokenizer_classes)
    return meta


def pipeline_checkpoints(nlp: Any) -> List[Any]:
    """(component name, checkpoint name, tokenizer class name) of each luke_ner component of
    a loaded pipeline."""
    out = []
    for name in nlp.component_names:
        if nlp.get_pipe_meta(name).factory != "luke_ner":
            continue
        pipe = nlp.get_pipe(name)
        runtime = pipe.runtime  # whichever backend holds the checkpoint
        tokenizer = type(runtime.tokenizer).__name__ if runtime.is_loaded else ""
        out.append((name, str(pipe.model.attrs["name"]), tokenizer))
    return out


def is_hub_id(name: str) -> bool:
    """Whether a checkpoint name is a Hugging Face hub id (owner/name), not a folder."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not os.path.isdir(name)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
