"""4-bit blocks with an additive term per block, on onnxruntime's fast MatMulNBits kernel.

A GGUF Q4_1 block dequantizes to d*q + m; an HQQ block to (q - z) * s with a float zero point z, that is s*q + m with
m = -z*s. MatMulNBits can take the second form directly (float zero points), but onnxruntime 1.32 then runs a slow
path: one 576x1536 4-bit MatMulNBits at M=1 on 2 cores took 0.9-1.2 ms with float zero points at any accuracy level
against 24 us (level 4) / 52 us (level 1) with uint8 ones, and SmolLM2-135M decoded at 5-6 tok/s that way, slower than
fp32 (docs/BENCHMARKS.md, int4 recipes). So both recipes compute

    y = MatMulNBits(x, codes, scales, zero points 0) + MatMul(block sums of x, mins [blocks, N])

where the block sums are one Reshape + ReduceSum of x per distinct input (q/k/v or gate/up share theirs). The second
term is x . m summed block by block, so the two together are x . (s*q + m) in fp32.
"""
from __future__ import annotations

import numpy as np

from training.export import ExportError


class MinTerms:
    """Builds the min-term nodes for one graph; `initializers` collects what they need, `sums` one ReduceSum per x."""

    def __init__(self, block: int, prefix: str):
        self.block, self.prefix = block, prefix
        self.sums: dict[str, str] = {}
        self.initializers: list = []

    def nodes(self, name: str, x: str, k: int, nbits_output: str, mins: np.ndarray, output: str) -> list:
        """Nodes adding x's block sums @ mins ([k / block, N] fp32) to nbits_output, writing `output`."""
        from onnx import helper, numpy_helper

        if k % self.block:
            raise ExportError(f"{name}: K={k} is not a multiple of the block size {self.block}")
        out = self._block_sums(x, k)
        mins_name = f"{name}Min/mins"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(mins, np.float32), mins_name))
        return out + [helper.make_node("MatMul", [self.sums[x], mins_name], [f"{name}Min/output_0"], name=f"{name}Min"),
                      helper.make_node("Add", [nbits_output, f"{name}Min/output_0"], [output], name=f"{name}Add")]

    def _block_sums(self, x: str, k: int) -> list:
        """Nodes for x [batch, seq, k] -> [batch, seq, k / block] (sums over each block), once per input."""
        from onnx import helper, numpy_helper

        if x in self.sums:
            return []
        name = f"{self.prefix}/block_sums_{len(self.sums)}"
        self.sums[x] = f"{name}/ReduceSum/output_0"
        shape, axes = f"{name}/shape", f"{name}/axes"
        self.initializers.extend([numpy_helper.from_array(np.array([0, 0, k // self.block, self.block], np.int64),
                                                          shape),
                                  numpy_helper.from_array(np.array([-1], np.int64), axes)])
        return [helper.make_node("Reshape", [x, shape], [f"{name}/Reshape/output_0"], name=f"{name}/Reshape"),
                helper.make_node("ReduceSum", [f"{name}/Reshape/output_0", axes], [self.sums[x]],
                                 name=f"{name}/ReduceSum", keepdims=0)]


def split_float_zero_points(model, log=print) -> int:
    """Rewrites, in place, every 4-bit MatMulNBits of `model` whose zero points are float (HQQ's) into one with uint8
    zero points 0 plus the min term m = -z*s; returns how many. Nodes whose K is not a multiple of their block size
    keep their float zero points (correct, only slow) and are named in the log."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    terms: dict[int, MinTerms] = {}
    nodes, drop, skipped = [], set(), []
    for node in g.node:
        zp = inits.get(node.input[3]) if node.op_type == "MatMulNBits" and len(node.input) > 3 else None
        if zp is None or zp.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, bits, bs = attrs["K"], attrs["N"], attrs.get("bits", 4), attrs["block_size"]
        if bits != 4 or k % bs:
            skipped.append(node.name)
            nodes.append(node)
            continue
        nb = k // bs
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, nb)
        z = numpy_helper.to_array(zp).astype(np.float32).reshape(n, nb)
        zero_name = f"{node.input[3]}_uint8_zero"
        g.initializer.append(numpy_helper.from_array(np.zeros(n * ((nb + 1) // 2), np.uint8), zero_name))
        drop.add(node.input[3])
        nbits_out = f"{node.name}/nbits_output_0"
        output = node.output[0]
        node.input[3] = zero_name
        node.output[0] = nbits_out
        t = terms.setdefault(bs, MinTerms(bs, f"/min_term/b{bs}"))
        nodes.append(node)
        nodes.extend(t.nodes(node.name, node.input[0], k, nbits_out, (-(z * scales)).T, output))
    if skipped:
        log(f"  kept float zero points (slow kernel) where K is not a multiple of the block: {', '.join(skipped)}")
    if not terms:
        return 0
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept + [i for t in terms.values() for i in t.initializers])
    del g.node[:]
    g.node.extend(nodes)
    return len(drop)
