"""Rewrite a BERT ONNX export's unfused self-attention into one `com.microsoft.Attention` node per layer.

The exported all-MiniLM-L6-v2 graph writes attention as separate Q/K/V MatMuls, scales Q and K by
head_size^-1/4 each, adds a boolean-mask bias and guards the Softmax with IsNaN/Where. onnxruntime's
own fusions do not recognise that pattern, so attention runs as ~20 small nodes per layer. This
module matches, per Softmax, the pattern

    X -> MatMul(Wq) -> Add(bq) -> Reshape/Transpose -> Mul(s) --.
    X -> MatMul(Wk) -> Add(bk) -> Reshape/Transpose.. -> Mul(s) -> MatMul -> Add(mask) -> Softmax
         [-> IsNaN/Where] -> MatMul(V) -> Transpose -> Reshape = O
    X -> MatMul(Wv) -> Add(bv) -> Reshape/Transpose ------------------------------------'

and replaces it by `O = Attention(X, Concat(Wq, Wk, Wv), Concat(bq, bk, bv), Cast<int32>(attention_mask))`
with the graph's own scale. The weights stay whatever the graph computes them from (here the int8
file's dequantised values; onnxruntime folds the Concat at load), so the arithmetic is the same.
Dead nodes are removed. Pure graph surgery with the `onnx` package: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, Optional

REWRITE_VERSION = 3  # part of the derived file's cache key: bump when the rewrite changes


class RewriteError(RuntimeError):
    """The graph is not the pattern this rewrite knows."""


class _Graph:
    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.g = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self._np = numpy_helper

    def const(self, name: str):
        """The value of an initializer or Constant node, else None."""
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def only_consumer(self, name: str, op: str) -> Optional[Any]:
        cs = self.consumers.get(name, [])
        return cs[0] if len(cs) == 1 and cs[0].op_type == op else None


def _to_projection(g: _Graph, name: str) -> tuple[float, Any]:
    """Walk back from a Q/K/V operand through Mul-by-constant, Reshape and Transpose to the
    `Add(MatMul(X, W), b)` projection; returns (product of the scalar scales met, the Add node)."""
    scale = 1.0
    for _ in range(12):
        n = g.producer.get(name)
        if n is None:
            break
        if n.op_type in ("Reshape", "Transpose"):
            name = n.input[0]
        elif n.op_type == "Mul":
            c0, c1 = g.const(n.input[0]), g.const(n.input[1])
            c, other = (c1, n.input[0]) if c1 is not None else (c0, n.input[1])
            if c is None or c.size != 1:
                raise RewriteError(f"{n.name}: Mul by a non-scalar on the attention path")
            scale *= float(c.reshape(-1)[0])
            name = other
        elif n.op_type == "Add":
            mm = next(
                (
                    g.producer.get(i)
                    for i in n.input
                    if g.producer.get(i) is not None and g.producer[i].op_type == "MatMul"
                ),
                None,
            )
            if mm is None:
                raise RewriteError(f"{n.name}: projection Add without a MatMul input")
            return scale, n
        else:
            raise RewriteError(f"{n.op_type} {n.name} on the attention path")
    raise RewriteError(f"no projection found behind {name}")


def _split_projection(g: _Graph, add: Any) -> tuple[str, str, str]:
    """(X, W, b) of `Add(MatMul(X, W), b)`."""
    mm_in = next(i for i in add.input if g.producer.get(i) is not None and g.producer[i].op_type == "MatMul")
    bias = next(i for i in add.input if i != mm_in)
    mm = g.producer[mm_in]
    return mm.input[0], mm.input[1], bias


def _match_layer(g: _Graph, softmax: Any) -> dict[str, Any]:
    add_mask = g.producer.get(softmax.input[0])
    if add_mask is None or add_mask.op_type != "Add":
        raise RewriteError(f"{softmax.name}: input is not Add(scores, mask)")
    qk = next(
        (g.producer[i] for i in add_mask.input if g.producer.get(i) is not None and g.producer[i].op_type == "MatMul"),
        None,
    )
    if qk is None:
        raise RewriteError(f"{softmax.name}: no Q.K MatMul")
    probs = softmax.output[0]
    # optional NaN guard: IsNaN(p) -> Where(isnan, 0, p)
    users = g.consumers.get(probs, [])
    isnan = next((n for n in users if n.op_type == "IsNaN"), None)
    if isnan is not None:
        where = g.only_consumer(isnan.output[0], "Where")
        if where is None or len(users) != 2 or where not in users:
            raise RewriteError(f"{softmax.name}: IsNaN without its Where")
        probs = where.output[0]
    ctx = g.only_consumer(probs, "MatMul")
    if ctx is None or ctx.input[0] != probs:
        raise RewriteError(f"{softmax.name}: probabilities do not feed one MatMul")
    tr = g.only_consumer(ctx.output[0], "Transpose")
    rs = g.only_consumer(tr.output[0], "Reshape") if tr is not None else None
    if tr is None or rs is None:
        raise RewriteError(f"{softmax.name}: context is not Transpose -> Reshape")
    perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
    if perm != [0, 2, 1, 3]:
        raise RewriteError(f"{softmax.name}: context transpose {perm}")
    sq, q_add = _to_projection(g, qk.input[0])
    sk, k_add = _to_projection(g, qk.input[1])
    sv, v_add = _to_projection(g, ctx.input[1])
    xq, wq, bq = _split_projection(g, q_add)
    xk, wk, bk = _split_projection(g, k_add)
    xv, wv, bv = _split_projection(g, v_add)
    if not (xq == xk == xv):
        raise RewriteError(f"{softmax.name}: Q, K and V do not project the same input")
    if sv != 1.0:
        raise RewriteError(f"{softmax.name}: V is scaled")
    return {"x": xq, "w": (wq, wk, wv), "b": (bq, bk, bv), "scale": sq * sk, "out": rs.output[0], "name": softmax.name}


def _mask_bias_inputs(g: _Graph) -> None:
    """The scores' mask must come from the graph input attention_mask (checked loosely: the
    Attention node takes the raw mask; a mask from anywhere else is not this pattern)."""
    names = {i.name for i in g.g.input}
    if "attention_mask" not in names:
        raise RewriteError("the graph has no attention_mask input")


def _prune(graph: Any) -> None:
    """Drop nodes (and initializers) that no graph output depends on."""
    producer = {o: n for n in graph.node for o in n.output}
    need = {o.name for o in graph.output}
    live: set[int] = set()
    stack = list(need)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        n = producer.get(name)
        if n is None or id(n) in live:
            continue
        live.add(id(n))
        stack.extend(i for i in n.input if i)
        for a in n.attribute:  # subgraphs (If/Loop) are left alone: keep what they could read
            if a.g is not None and a.g.node:
                stack.extend(i for sn in a.g.node for i in sn.input if i)
    keep = [n for n in graph.node if id(n) in live]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in seen]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def fuse_attention(model: Any, num_heads: int) -> int:
    """Rewrite `model` (an onnx.ModelProto) in place; returns the number of layers fused.
    Raises RewriteError when no Softmax matches (the caller falls back to the original graph)."""
    from onnx import TensorProto, helper

    g = _Graph(model.graph)
    _mask_bias_inputs(g)
    layers = [_match_layer(g, n) for n in model.graph.node if n.op_type == "Softmax"]
    if not layers:
        raise RewriteError("no self-attention Softmax in the graph")
    mask32 = "kbingest_attention_mask_int32"
    new_nodes = [
        helper.make_node("Cast", ["attention_mask"], [mask32], to=TensorProto.INT32, name="kbingest_mask_cast")
    ]
    outs = {}
    for k, L in enumerate(layers):
        w, b = f"kbingest_attn{k}_qkv_weight", f"kbingest_attn{k}_qkv_bias"
        new_nodes.append(helper.make_node("Concat", list(L["w"]), [w], axis=1, name=f"kbingest_attn{k}_wcat"))
        new_nodes.append(helper.make_node("Concat", list(L["b"]), [b], axis=0, name=f"kbingest_attn{k}_bcat"))
        att = helper.make_node(
            "Attention",
            [L["x"], w, b, mask32],
            [L["out"]],
            domain="com.microsoft",
            num_heads=num_heads,
            scale=float(L["scale"]),
            name=f"kbingest_attn{k}",
        )
        outs[L["out"]] = att
    # the old producer of each output goes; the new node takes its place (topological order kept:
    # every input of the Attention node is produced before the old output was)
    body = []
    for n in model.graph.node:
        if n.output and n.output[0] in outs:
            body.append(outs.pop(n.output[0]))
            continue
        body.append(n)
    if outs:
        raise RewriteError(f"attention outputs without a producer: {sorted(outs)}")
    # Cast/Concat nodes first: their inputs are graph inputs, initializers or dequantise nodes,
    # which may come later in the list; put them right before their first use instead
    placed = _insert_before_use(body, new_nodes)
    del model.graph.node[:]
    model.graph.node.extend(placed)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _prune(model.graph)
    return len(layers)


def fuse_gelu(model: Any) -> int:
    """Rewrite the erf form of GELU, `x * (0.5 * (1 + erf(x / sqrt(2))))` (5 nodes, in any operand
    order), into one `com.microsoft.Gelu` node; onnxruntime then folds the bias Add before it into
    BiasGelu. Returns the number rewritten (0 when the graph has none: not an error)."""
    from onnx import helper

    g = _Graph(model.graph)

    def const_near(node: Any, value: float) -> Optional[str]:
        """The non-constant input of a binary node whose other input is the scalar `value`."""
        for a, b in ((0, 1), (1, 0)):
            c = g.const(node.input[b])
            if c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) < 1e-4 * max(1.0, value):
                return node.input[a]
        return None

    replace: dict[str, Any] = {}
    for erf in [n for n in model.graph.node if n.op_type == "Erf"]:
        div = g.producer.get(erf.input[0])
        add = g.only_consumer(erf.output[0], "Add")
        half = g.only_consumer(add.output[0], "Mul") if add is not None else None
        out = g.only_consumer(half.output[0], "Mul") if half is not None else None
        if div is None or div.op_type != "Div" or g.const(div.input[1]) is None or out is None:
            continue
        x = div.input[0]
        if (
            abs(float(g.const(div.input[1]).reshape(-1)[0]) - 2**0.5) > 1e-4
            or const_near(add, 1.0) is None
            or const_near(half, 0.5) is None
            or x not in out.input
        ):
            continue
        replace[out.output[0]] = helper.make_node(
            "Gelu", [x], [out.output[0]], domain="com.microsoft", name=f"kbingest_gelu{len(replace)}"
        )
    if not replace:
        return 0
    body = [replace.get(n.output[0], n) if n.output else n for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(body)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _prune(model.graph)
    return len(replace)


def _insert_before_use(body: list[Any], extra: list[Any]) -> list[Any]:
    """`body` with each of `extra` inserted after the last producer of its inputs (topological)."""
    out = list(body)
    pending = list(extra)
    while pending:
        n = pending.pop(0)
        pos = {o: i for i, m in enumerate(out) for o in m.output}
        after = max((pos[i] for i in n.input if i in pos), default=-1)
        out.insert(after + 1, n)
    return out


def _int8_weight(g: _Graph, name: str) -> Optional[tuple[Any, Any, str]]:
    """(int8 weight, per-column scale, the int8 tensor's name) of a weight computed as
    `Cast(Wq) * s` from the file's int8 `Wq`, else None."""
    mul = g.producer.get(name)
    cast = g.producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
    wq = cast.input[0] if cast is not None and cast.op_type == "Cast" else None
    w = g.const(wq) if wq else None
    s = g.const(mul.input[1]) if w is not None and mul is not None else None
    if w is None or s is None or w.dtype.name != "int8" or w.ndim != 2 or s.size not in (1, w.shape[1]):
        return None
    import numpy as np

    return w, np.broadcast_to(s.reshape(-1).astype(np.float32), (w.shape[1],)).copy(), str(wq)


def _terms(p: str, x: str, wq: str, scale: str, y: str, terms: int) -> list[Any]:
    """y = x W for W = wq * scale with x as `terms` uint8 terms (each per tensor; each one after the
    first carries the rounding error of those before it): one int8 GEMM per term, summed."""
    from onnx import helper

    nodes, cur, acc = [], x, ""
    for t in range(1, terms + 1):
        q, s, z = f"{p}_q{t}", f"{p}_s{t}", f"{p}_z{t}"
        nodes.append(helper.make_node("DynamicQuantizeLinear", [cur], [q, s, z], name=f"{p}_quant{t}"))
        if t < terms:
            nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{p}_x{t}"], name=f"{p}_dq{t}"))
            nodes.append(helper.make_node("Sub", [cur, f"{p}_x{t}"], [f"{p}_r{t}"], name=f"{p}_residual{t}"))
            cur = f"{p}_r{t}"
        out = y if terms == 1 else f"{p}_y{t}"
        nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat", [q, wq, s, scale, z], [out], domain="com.microsoft", name=f"{p}_mm{t}"
            )
        )
        if acc:  # the running sum: the last one is y
            total = y if t == terms else f"{p}_sum{t}"
            nodes.append(helper.make_node("Add", [acc, out], [total], name=f"{p}_add{t}"))
            out = total
        acc = out
    return nodes


FIRST_TOKEN_TERMS, REST_TERMS = 3, 2
_SLICE_CONSTS = {"kbingest_i8_zero": 0, "kbingest_i8_one": 1, "kbingest_i8_end": 1 << 62}


def _projection(p: str, x: str, wq: str, scale: str, y: str) -> list[Any]:
    """y = x W in int8 with the first token apart: x[:, :1] (BERT's [CLS], whose activations are
    several times the others', the "attention sink") in three terms on its own scale, x[:, 1:] in two
    terms on theirs, the rows joined again. Quantised together, that one row set the scale of every
    token, and the ranking noise was 2.6x larger (docs/runtime.md). Expects [batch, tokens, width]
    with at least two tokens (the tokenizer always adds [CLS] and [SEP])."""
    from onnx import helper

    zero, one, end = _SLICE_CONSTS
    return [
        helper.make_node("Slice", [x, zero, one, one], [f"{p}_first"], name=f"{p}_first"),
        helper.make_node("Slice", [x, one, end, one], [f"{p}_rest"], name=f"{p}_rest"),
        *_terms(f"{p}_a", f"{p}_first", wq, scale, f"{p}_yfirst", FIRST_TOKEN_TERMS),
        *_terms(f"{p}_b", f"{p}_rest", wq, scale, f"{p}_yrest", REST_TERMS),
        helper.make_node("Concat", [f"{p}_yfirst", f"{p}_yrest"], [y], axis=1, name=f"{p}_rows"),
    ]


def int8_matmuls(model: Any) -> int:
    """Rewrite each projection on an int8 weight of the file (fp32 `MatMul(X, Cast(Wq) * s)`, s per
    column: attention output and the two FFN MatMuls; and the packed Q/K/V projection of each
    `Attention` node, which becomes the projection + `com.microsoft.MultiHeadAttention` on the
    projected Q, K, V) into int8 arithmetic with two terms for X:

        q1 = quant(X);  r = X - dequant(q1);  q2 = quant(r)             (uint8, per tensor)
        Y  = MatMulIntegerToFloat(q1, Wq) + MatMulIntegerToFloat(q2, Wq)  (int32 sums, then scales)

    The weight is exact (it is int8 in the file); the second term carries the first one's rounding
    error, so X is represented to ~16 bits instead of 8: one-term dynamic quantisation moved the
    vectors to cosine 0.992 to fastembed's, two terms keep them >= 0.99999 (docs/runtime.md), and
    int8 GEMMs run several times faster than fp32 on AVX-512 VNNI. The first token's row is
    quantised apart, in three terms (`_projection`): its activations are several times the others',
    so one scale for all would cost the other tokens 1-2 bits. Returns the number rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    ms = "com.microsoft"
    body: list[Any] = []
    done = 0

    def add_init(arr: Any, name: str) -> str:
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
        return name

    for nd in model.graph.node:
        p = f"kbingest_i8_{done}"
        if nd.op_type == "MatMul" and (ws := _int8_weight(g, nd.input[1])) is not None:
            body += _projection(p, nd.input[0], ws[2], add_init(ws[1], f"{p}_wscale"), nd.output[0])
            done += 1
            continue
        cat = g.producer.get(nd.input[1]) if nd.op_type == "Attention" and len(nd.input) > 1 else None
        parts = [_int8_weight(g, i) for i in cat.input] if cat is not None and cat.op_type == "Concat" else []
        if not parts or any(w is None for w in parts):
            body.append(nd)
            continue
        w = np.concatenate([w[0] for w in parts], axis=1)  # type: ignore[index]
        sc = np.concatenate([w[1] for w in parts])  # type: ignore[index]
        widths = [int(w[0].shape[1]) for w in parts]  # type: ignore[index]
        body += _projection(p, nd.input[0], add_init(w, f"{p}_w"), add_init(sc, f"{p}_wscale"), f"{p}_qkv")
        body.append(
            helper.make_node(
                "Split",
                [f"{p}_qkv", add_init(np.array(widths, dtype=np.int64), f"{p}_widths")],
                [f"{p}_q", f"{p}_k", f"{p}_v"],
                axis=-1,
                name=f"{p}_split",
            )
        )
        attrs = {a.name: helper.get_attribute_value(a) for a in nd.attribute if a.name in ("num_heads", "scale")}
        body.append(
            helper.make_node(
                "MultiHeadAttention",
                [f"{p}_q", f"{p}_k", f"{p}_v", nd.input[2], nd.input[3]],
                list(nd.output),
                domain=ms,
                name=f"{p}_mha",
                **attrs,
            )
        )
        done += 1
    if done:
        for name, value in _SLICE_CONSTS.items():
            add_init(np.array([value], dtype=np.int64), name)
        del model.graph.node[:]
        model.graph.node.extend(body)
        if not any(o.domain == ms for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(ms, 1))
        _prune(model.graph)
    return done


def load_fused(model_path: str, num_heads: int, int8: bool = False):
    """The fused ModelProto of an ONNX file (raises RewriteError / onnx errors on failure); with
    `int8`, every projection in int8 arithmetic (`int8_matmuls`)."""
    import onnx

    model = onnx.load(model_path)
    fuse_attention(model, num_heads)
    fuse_gelu(model)
    if int8 and not int8_matmuls(model):
        raise RewriteError("no MatMul on an int8 weight with per-column scales")
    onnx.checker.check_model(model)
    return model
