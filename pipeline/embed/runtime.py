"""kbingest's own onnxruntime embedding runtime for the shipped all-MiniLM-L6-v2 (int8 ONNX file).

What it does differently from fastembed, each measured (docs/runtime.md):
- the graph's self-attention is rewritten once into `com.microsoft.Attention` nodes
  (pipeline/embed/onnx_attention.py); the derived file is cached in the user cache folder, keyed by
  the source file's sha256, so later loads need neither the rewrite nor the `onnx` package;
- one session per core with 1 intra-op thread each, fed by one Python thread each (onnxruntime
  releases the GIL): data parallelism beats one session's op parallelism on small inputs;
- graph optimisation level "basic" (constant folding, no layout or transformer fusions): onnxruntime's
  SkipLayerNormalization kernel is slower here than the Add + LayerNormalization it replaces;
- every text runs at its own length (batch 1: no padding), longest first, pulled from a shared
  queue so that the cores finish together;
- on a CPU with int8 dot products (AVX-512 VNNI here), every projection runs in two-term int8
  (`onnx_attention.int8_matmuls`: the file's exact int8 weights, the activations as two uint8
  terms, ~16 bits of their own range; the first token's row apart, in three): cosine >= 0.99999 to
  fastembed's vectors and the labelled questions' top 5 unchanged; `KBINGEST_RUNTIME_INT8=0` keeps fp32.

Tokenizer, mean pooling and L2 normalisation are fastembed's (same files, same settings, same
float64 pooling), so the vectors are fastembed's (cosine >= 0.999, tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

OUTPUT = "last_hidden_state"
INT8_ENV = "KBINGEST_RUNTIME_INT8"  # "0": keep every MatMul in fp32 (the attention-fused graph alone)


class RuntimeUnavailable(RuntimeError):
    """The fast runtime cannot be built here (the caller falls back to fastembed)."""


# ---- tokenizer: fastembed's load_tokenizer, without importing fastembed ----------------------


def load_tokenizer(model_dir: Path):
    """The tokenizer as fastembed configures it: truncation at the stricter of model_max_length /
    max_length, the special tokens of special_tokens_map.json, padding to the longest (unused here:
    every text runs alone)."""
    from tokenizers import AddedToken, Tokenizer

    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    limits = [
        v for v in (cfg.get("model_max_length"), cfg.get("max_length")) if isinstance(v, int) and 0 < v < 1_000_000
    ]
    if not limits:
        raise RuntimeUnavailable(f"no maximum context length in {model_dir}/tokenizer_config.json")
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    trunc = tok.truncation or {}
    tok.enable_truncation(
        max_length=min(limits), direction=cfg.get("truncation_side") or trunc.get("direction", "right")
    )
    special = model_dir / "special_tokens_map.json"
    if special.exists():
        for v in json.loads(special.read_text()).values():
            for t in v if isinstance(v, list) else [v]:
                tok.add_special_tokens([t if isinstance(t, str) else AddedToken(**t)])
    tok.no_padding()
    return tok


# ---- the derived (attention-fused) model file ------------------------------------------------


def cache_dir() -> Path:
    env = os.environ.get("KBINGEST_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kbingest", appauthor=False))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fused_model_file(source: Path, num_heads: int, int8: bool = False) -> Path:
    """The attention-fused copy of `source` (with `int8`, also its MatMuls in two-term int8), built
    once and cached (atomic write)."""
    from kbingest.pipeline.embed.onnx_attention import REWRITE_VERSION

    key = f"{file_sha256(source)[:24]}-h{num_heads}-v{REWRITE_VERSION}" + ("-i8x2" if int8 else "")
    out = cache_dir() / "models" / f"{source.stem}-attention-{key}.onnx"
    if out.exists():
        return out
    try:
        from kbingest.pipeline.embed.onnx_attention import load_fused
    except ImportError as e:  # pragma: no cover - onnx is a dependency
        raise RuntimeUnavailable(f"the onnx package is missing: {e}") from e
    try:
        model = load_fused(str(source), num_heads, int8=int8)
    except Exception as e:
        raise RuntimeUnavailable(f"attention rewrite of {source.name} failed: {e}") from e
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ---- sessions --------------------------------------------------------------------------------


def session_options(threads: int = 1, arena: bool = True, level: str = "all", spin: Optional[bool] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    if spin is not None:  # the intra-op pool's threads spin while waiting (onnxruntime's default: on)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")  # int8 dot-product instructions


def cpu_has_int8_dot(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has int8 dot-product instructions (x86 VNNI, Arm dotprod). Without them
    onnxruntime's u8s8 GEMM may use an instruction that saturates at int16 (VPMADDUBSW), which
    would move the two-term int8 vectors: the runtime then stays in fp32."""
    try:
        flags = set(Path(cpuinfo).read_text(errors="replace").split())
    except OSError:
        return False
    return any(f in flags for f in INT8_CPU_FLAGS)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def pool_text_vectors(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fastembed's mean pooling (float64 sum over the real tokens) then L2 normalisation."""
    summed = np.sum(hidden, axis=1, where=mask[:, :, np.newaxis].astype(bool), dtype=np.float64)
    pooled = summed / np.maximum(np.sum(mask, axis=1, keepdims=True), 1e-9)
    norm = np.maximum(np.linalg.norm(pooled, ord=2, axis=1, keepdims=True), 1e-12)
    return (pooled / norm).astype(hidden.dtype, copy=False)


class OnnxRuntimeEmbedder:
    """Embeds with `sessions` onnxruntime sessions of `threads_per_session` intra-op threads each
    (default: one session per available core, 1 thread each) on the attention-fused graph."""

    def __init__(
        self,
        model_file: Path,
        tokenizer_dir: Path,
        sessions: Optional[int] = None,
        threads_per_session: int = 1,
        fuse: bool = True,
        arena: bool = True,
        level: str = "basic",
        int8: Optional[bool] = None,
        spin: Optional[bool] = None,
    ) -> None:
        import onnxruntime as ort

        self.tokenizer = load_tokenizer(tokenizer_dir)
        num_heads = int(json.loads((tokenizer_dir / "config.json").read_text()).get("num_attention_heads", 12))
        if int8 is None:  # default: two-term int8 MatMuls where the CPU has int8 dot products
            int8 = fuse and os.environ.get(INT8_ENV, "") != "0" and cpu_has_int8_dot()
        self.int8 = bool(int8 and fuse)
        try:
            self.graph_file = fused_model_file(Path(model_file), num_heads, self.int8) if fuse else Path(model_file)
        except RuntimeUnavailable:
            if not self.int8:
                raise
            self.int8 = False  # the int8 rewrite failed: the fp32 attention-fused graph still serves
            self.graph_file = fused_model_file(Path(model_file), num_heads)
        self.n_sessions = max(1, sessions or available_cores())
        so = session_options(threads_per_session, arena=arena, level=level, spin=spin)
        try:
            self._sessions = [
                ort.InferenceSession(str(self.graph_file), so, providers=["CPUExecutionProvider"])
                for _ in range(self.n_sessions)
            ]
        except Exception as e:
            raise RuntimeUnavailable(f"onnxruntime cannot load {self.graph_file.name}: {e}") from e
        self._inputs = {i.name for i in self._sessions[0].get_inputs()}
        width = next((o.shape[-1] for o in self._sessions[0].get_outputs() if o.name == OUTPUT), None)
        self.dim = width if isinstance(width, int) else 0  # 0: known after the first text
        self._pool = (
            ThreadPoolExecutor(self.n_sessions - 1, thread_name_prefix="kbingest-ort") if self.n_sessions > 1 else None
        )

    def _one(self, session: Any, ids: list[int]) -> np.ndarray:
        n = len(ids)
        feed = {"input_ids": np.asarray(ids, dtype=np.int64).reshape(1, n)}
        mask = np.ones((1, n), dtype=np.int64)
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros((1, n), dtype=np.int64)
        hidden = session.run([OUTPUT], feed)[0]
        return pool_text_vectors(hidden, mask)[0]

    def embed(self, texts: list[str]) -> np.ndarray:
        encs = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        if not encs:
            return np.empty((0, self.dim), dtype=np.float32)
        order = sorted(range(len(encs)), key=lambda i: -len(encs[i]))  # longest first: the cores end together
        results: list[Optional[np.ndarray]] = [None] * len(encs)
        lock = threading.Lock()
        nxt = iter(order)

        def work(session: Any) -> None:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                results[i] = self._one(session, encs[i])

        helpers = min(self.n_sessions, len(encs)) - 1
        futs = [self._pool.submit(work, self._sessions[k + 1]) for k in range(helpers)] if self._pool else []
        try:
            work(self._sessions[0])
        finally:
            for f in futs:
                f.result()
        vectors = [v for v in results if v is not None]
        assert len(vectors) == len(encs), "every text was embedded"
        return np.stack(vectors).astype(np.float32, copy=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
