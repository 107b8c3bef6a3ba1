"""Measurements behind the roofline figure (bench/roofline.py), run inside one worker process.

- `gemm_rate`: one onnxruntime node in a loop at the model's shapes: fp32 `MatMul` against a
  constant weight, `DynamicQuantizeMatMul` (com.microsoft: fp32 in, int8 weight, int8 compute),
  `DynamicQuantizeLinear` + `MatMulInteger`, and `QLinearMatMul` on uint8 input (int8 compute
  alone, no quantisation of the input); GMAC/s.
- `model_macs`: multiply-accumulates of all-MiniLM-L6-v2 for one text of n tokens.
- `int8_projection_graph`: the attention-fused fp32 graph with every fp32 MatMul on a dequantised
  int8 weight (18: the Q/K/V projection stays inside Attention) replaced by `DynamicQuantizeMatMul`
  on the file's own int8 weight and per-column scale: one-term int8, activations quantised per
  call as one uint8 tensor (the route measured and rejected: cosine 0.982). The two-term route that
  was kept is pipeline/embed/onnx_attention.py `int8_matmuls`.
- `breakdown`: where one session's time goes per text (tokenise, run, pool) and the per-op profile.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

D, FFN, LAYERS, HEADS = 384, 1536, 6, 12


def model_macs(n: int) -> float:
    """MACs of one text of n tokens: per layer Q, K, V and output projections (4 n d^2), the FFN
    (2 n d 4d), and the attention scores and context (2 n^2 d)."""
    return LAYERS * (4 * n * D * D + 2 * n * D * FFN + 2 * n * n * D)


def _session(model: Any, threads: int, spin: bool = True):
    import onnxruntime as ort

    from kbingest.pipeline.embed.runtime import session_options

    so = session_options(threads, spin=spin)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _gemm_model(kind: str, k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
    scale = (rng.random(n, dtype=np.float32) * 0.01 + 0.001).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT if kind != "qlinear" else TensorProto.UINT8, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT if kind != "qlinear" else TensorProto.UINT8, ["m", n])
    inits = []
    if kind == "fp32":
        inits = [numpy_helper.from_array(wq.astype(np.float32) * scale, "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    elif kind == "dqmatmul":
        inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "ws")]
        nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws"], ["y"], domain="com.microsoft")]
    elif kind == "matmulinteger":
        wu = (wq.astype(np.int16) + 128).astype(np.uint8)
        inits = [
            numpy_helper.from_array(wu, "wq"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "wz"),
            numpy_helper.from_array(scale, "ws"),
        ]
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["xs", "ws"], ["s"]),
            helper.make_node("Mul", ["accf", "s"], ["y"]),
        ]
    elif kind == "qlinear":
        inits = [
            numpy_helper.from_array(wq, "wq"),
            numpy_helper.from_array(np.float32(0.02), "xs"),
            numpy_helper.from_array(np.uint8(128), "xz"),
            numpy_helper.from_array(np.float32(0.01), "ws"),
            numpy_helper.from_array(np.int8(0), "wz"),
            numpy_helper.from_array(np.float32(1.0), "ys"),
            numpy_helper.from_array(np.uint8(128), "yz"),
        ]
        nodes = [helper.make_node("QLinearMatMul", ["x", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["y"])]
    else:
        raise ValueError(kind)
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def gemm_rate(kind: str, m: int, k: int, n: int, threads: int, seconds: float = 1.0) -> float:
    """GMAC/s of one [m, k] x [k, n] node in a loop for about `seconds` (best of 3 slices)."""
    sess = _session(_gemm_model(kind, k, n), threads)
    rng = np.random.default_rng(1)
    x = (
        rng.integers(0, 256, size=(m, k), dtype=np.uint8)
        if kind == "qlinear"
        else rng.standard_normal((m, k), dtype=np.float32)
    )
    feed = {"x": x}
    sess.run(None, feed)
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 0.1:
        sess.run(None, feed)
        reps += 1
    per = max(1, int(reps * seconds / 0.3))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(per):
            sess.run(None, feed)
        best = max(best, per * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def int8_projection_graph(fused_file: Path):
    """The fused graph with each fp32 MatMul whose weight is `Cast(int8) * scale` (and the packed
    Q/K/V weight of each Attention node left as is) replaced by `DynamicQuantizeMatMul` on the
    int8 weight and its per-column scale. Returns the ModelProto."""
    import onnx
    from onnx import helper, numpy_helper

    from kbingest.pipeline.embed.onnx_attention import _Graph, _int8_weight, _prune

    model = onnx.load(str(fused_file))
    g = model.graph
    weights = _Graph(g)
    out = []
    done = 0
    for nd in g.node:
        ws = _int8_weight(weights, nd.input[1]) if nd.op_type == "MatMul" else None
        if ws is None:
            out.append(nd)
            continue
        sname = f"{ws[2]}_col"
        g.initializer.append(numpy_helper.from_array(ws[1], sname))
        out.append(
            helper.make_node(
                "DynamicQuantizeMatMul",
                [nd.input[0], ws[2], sname],
                list(nd.output),
                domain="com.microsoft",
                name=f"{nd.name}_int8",
            )
        )
        done += 1
    del g.node[:]
    g.node.extend(out)
    _prune(g)
    return model, done


def breakdown(texts: list[str], graph_file: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """One session, 1 thread, every text alone: seconds in tokenising, session.run and pooling,
    GMAC/s reached inside run, and the per-op share of onnxruntime's profile."""
    import onnxruntime as ort

    from kbingest.pipeline.embed.runtime import OUTPUT, load_tokenizer, pool_text_vectors, session_options

    tok = load_tokenizer(tokenizer_dir)
    so = session_options(1, level="basic")
    prof_dir = tempfile.mkdtemp(prefix="kbingest-prof-")
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(prof_dir, "ort")
    sess = ort.InferenceSession(str(graph_file), so, providers=["CPUExecutionProvider"])
    t = Counter()
    macs = 0.0
    tokens = 0
    for text in texts:
        t0 = time.perf_counter()
        ids = tok.encode(text).ids
        t1 = time.perf_counter()
        n = len(ids)
        mask = np.ones((1, n), dtype=np.int64)
        feed = {
            "input_ids": np.asarray(ids, dtype=np.int64).reshape(1, n),
            "attention_mask": mask,
            "token_type_ids": np.zeros((1, n), dtype=np.int64),
        }
        t2 = time.perf_counter()
        hidden = sess.run([OUTPUT], feed)[0]
        t3 = time.perf_counter()
        pool_text_vectors(hidden, mask)
        t4 = time.perf_counter()
        t["tokenise"] += t1 - t0
        t["feed"] += t2 - t1
        t["run"] += t3 - t2
        t["pool"] += t4 - t3
        macs += model_macs(n)
        tokens += n
    prof = Path(sess.end_profiling())
    ops: Counter = Counter()
    for ev in json.loads(prof.read_text()):
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            ops[ev.get("args", {}).get("op_name", "?")] += ev.get("dur", 0)
    prof.unlink(missing_ok=True)
    total_op = sum(ops.values()) or 1
    return {
        "texts": len(texts),
        "tokens_mean": tokens / max(1, len(texts)),
        "gmac": macs / 1e9,
        "seconds": dict(t),
        "gmacs_in_run": macs / 1e9 / max(t["run"], 1e-9),
        "op_share": {k: v / total_op for k, v in ops.most_common()},
        "op_seconds": total_op / 1e6,
    }
