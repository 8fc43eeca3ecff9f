"""The token embedding as 8-bit blocks (GatherBlockQuantized, block 32, symmetric) instead of a float table.

onnxruntime-genai 0.18's builder quantizes Gather to 4 bits only, and the hqq recipes (our pass over an fp32 build)
quantize MatMuls only, so their embedding stayed fp32: 113 MB of hqq_mixed's 240 on SmolLM2-135M. Here:

    the Q8_0-style blocks of the float table: scale = max |x| / 127 per 32-block, codes round(x / scale) + 128,
        zero point 128, ~1/4 of fp32 (a table that was a GGUF's Q8_0 gets its own codes back, exactly);
    hqq_mixed (head 8-bit) of a tied model, the head's float weight being the table (compared by value)
        -> the head becomes an 8-bit MatMulNBits of those same blocks and the embedding reads its codes and
        scales (Reshape of B [vocab, blocks, 32]): one copy for both.

gguf_import reads its Q8_0 tied head the same way (`from_head`) and makes its GatherBlockQuantized with `node`.
onnxruntime 1.32's GatherBlockQuantized takes uint8 data at 8 bits with the data's (vocab, K) layout.
"""
from __future__ import annotations

import numpy as np

from training.export import ExportError

BLOCK = 32
PREFIX = "/model/embed_tokens"


def q8_blocks(table: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [vocab, K] = q + 128, scales fp32 [vocab, K / block]) of a float table, q = round(x / s),
    s = max |x| / 127 per block (an all-zero block gets scale 0)."""
    vocab, k = table.shape
    if k % block:
        raise ExportError(f"the embedding's width {k} is not a multiple of the block size {block}")
    blocks = table.astype(np.float32).reshape(vocab, k // block, block)
    s = np.abs(blocks).max(axis=-1) / 127
    q = np.rint(np.divide(blocks, s[..., None], out=np.zeros_like(blocks), where=s[..., None] > 0))
    return (np.clip(q, -127, 127).astype(np.int16) + 128).astype(np.uint8).reshape(vocab, k), s.astype(np.float32)


def node(data: str, ids: str, scales: str, zero_points: str, output: str):
    from onnx import helper

    return helper.make_node("GatherBlockQuantized", [data, ids, scales, zero_points], [output],
                            name=f"{PREFIX}/GatherBlockQuantized", domain="com.microsoft", bits=8,
                            block_size=BLOCK, gather_axis=0, quantize_axis=1)


def from_head(codes: str, scales: str, zero_points: str, vocab: int, k: int) -> tuple[list, list, tuple]:
    """(nodes, initializers, (data, scales, zero points)) for a GatherBlockQuantized reading an 8-bit head
    MatMulNBits' initializers (B [vocab, blocks, 32], scales and zero points [vocab * blocks])."""
    from onnx import helper, numpy_helper

    shapes = {"q": [vocab, k], "s": [vocab, k // BLOCK]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), f"{PREFIX}/shape_{n}") for n, v in shapes.items()]
    nodes, outs = [], []
    for src, shape, what in ((codes, "q", "codes"), (scales, "s", "scales"), (zero_points, "s", "zero_points")):
        out = f"{PREFIX}/{what}/Reshape/output_0"
        nodes.append(helper.make_node("Reshape", [src, f"{PREFIX}/shape_{shape}"], [out],
                                      name=f"{PREFIX}/{what}/Reshape"))
        outs.append(out)
    return nodes, inits, tuple(outs)


def quantize_embedding(model, share_head: bool, accuracy_level: int) -> str:
    """Replaces, in place, the Gather of input_ids from a float table by a GatherBlockQuantized 8-bit, before any
    MatMul is quantized. With `share_head` and a head whose float weight is the table (a tied model, compared by
    value), the head becomes an 8-bit MatMulNBits of the same blocks (`accuracy_level`) and the embedding reads
    its codes; otherwise the embedding gets its own blocks. Returns what it did, for the log ("" when there is
    no float embedding to replace)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    gathers = [n for n in g.node if n.op_type == "Gather" and "input_ids" in n.input]
    if len(gathers) != 1 or gathers[0].input[0] not in inits:
        return ""
    gather = gathers[0]
    table = numpy_helper.to_array(inits[gather.input[0]])
    vocab, k = table.shape
    codes, s = q8_blocks(table)
    head = next((n for n in g.node if n.op_type == "MatMul" and n.name == "/lm_head/MatMul"), None)
    tied = (share_head and head is not None and head.input[1] in inits
            and np.array_equal(numpy_helper.to_array(inits[head.input[1]]).T, table))
    replaced, extra, new = {}, [], []
    if tied:
        base = "lm_head.MatMul.weight"
        q, sc, zp = f"{base}_Q8_0", f"{base}_Q8_0_scales", f"{base}_Q8_0_zero_points"
        new = [numpy_helper.from_array(codes.reshape(vocab, k // BLOCK, BLOCK), q),
               numpy_helper.from_array(s.reshape(-1), sc),
               numpy_helper.from_array(np.full(s.size, 128, np.uint8), zp)]
        replaced[head.name] = helper.make_node("MatMulNBits", [head.input[0], q, sc, zp], list(head.output),
                                               name=head.name, domain="com.microsoft", K=k, N=vocab, bits=8,
                                               block_size=BLOCK, accuracy_level=accuracy_level)
        extra, shapes, (data, scales, zps) = from_head(q, sc, zp, vocab, k)
        new += shapes
        how = "one copy with the tied head, now 8-bit blocks of the same table"
    else:
        data, scales, zps = f"{PREFIX}/q8_codes", f"{PREFIX}/q8_scales", f"{PREFIX}/q8_zero_points"
        new = [numpy_helper.from_array(codes, data), numpy_helper.from_array(s, scales),
               numpy_helper.from_array(np.full(s.shape, 128, np.uint8), zps)]
        how = f"its own blocks ({(codes.nbytes + s.nbytes * 1.25) / 1e6:.1f} MB)"
    nodes = []
    for n in g.node:
        if n is gather:
            nodes.extend(extra + [node(data, gather.input[1], scales, zps, gather.output[0])])
        else:
            nodes.append(replaced.get(n.name, n))
    used = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used]   # the float table (and a replaced head's) go
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept + new)
    return (f"embedding: GatherBlockQuantized 8 bit, {how}, instead of the float table {vocab}x{k} "
            f"({table.nbytes / 1e6:.1f} MB)")
