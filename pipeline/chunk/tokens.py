"""Token counting with the embedding model's own tokenizer (the shipped all-MiniLM-L6-v2 files)."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

DEFAULT_MODEL_DIR_NAME = "all-MiniLM-L6-v2"


def shipped_model_dir() -> Path:
    """Folder holding the tokenizer files shipped as package data."""
    return Path(str(resources.files("kbingest.pipeline") / "model_files" / DEFAULT_MODEL_DIR_NAME))


class TokenCounter:
    """Counts tokens as the model sees them (special tokens excluded).

    tokenizer.json carries fixed padding/truncation to 128: both are switched off here,
    otherwise every text would count as 128 tokens.
    """

    def __init__(self, tokenizer_file: Path | str | None = None, tokenizer: object | None = None) -> None:
        from tokenizers import Tokenizer

        if tokenizer is not None:  # another model's tokenizer: a private copy we may reconfigure
            self._tok = Tokenizer.from_str(tokenizer.to_str())  # type: ignore[attr-defined]
        else:
            path = Path(tokenizer_file) if tokenizer_file else shipped_model_dir() / "tokenizer.json"
            self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets: ~30% faster
        return [len(e.ids) for e in encode(texts, add_special_tokens=False)]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of each token, to cut a text at a token boundary."""
        return list(self._tok.encode(text, add_special_tokens=False).offsets)


@functools.lru_cache(maxsize=4)
def default_counter() -> TokenCounter:
    return TokenCounter()
