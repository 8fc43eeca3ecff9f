"""The gguf_exact int4 recipe: a GGUF's own quantized blocks carried into the ONNX graph instead of re-quantizing
its dequantized weights onto another grid.

Used for an HF folder made by model_sources.gguf_to_hf, which records the GGUF next to the weights
(GGUF_SOURCE). Before any build, `plan` reads the GGUF's header and refuses a tensor type that cannot be imported
exactly, then compares every HF weight with the GGUF's dequantized one (bit for bit: gguf_to_hf wrote exactly
those values), so a fine-tuned or otherwise changed folder is refused by comparison, not by its name. After the
builder's fp32 build, `rewrite` swaps each weight for its blocks, checking first that the fp32 initializer it
replaces is the dequantized block data (so the tensor mapping and the q/k row permutation are checked too):

    Q4_1 MatMul weight   -> y = MatMulNBits(x) + MatMul(block sums of x, m): MatMulNBits bits 4, block 32 with
                            the GGUF's 4-bit codes, the fp16 scale d as an fp32 scale and uint8 zero point 0, so
                            it computes x . (d*q) (an fp16 times a 4-bit code is exact in fp32); the min term
                            sum over blocks of m * (sum of x over the block) is a small fp32 MatMul of the
                            ReduceSum of x per 32-block with the GGUF's m [blocks, N]. Together x . (d*q + m).
    Q8_0 MatMul weight   -> MatMulNBits bits 8, block 32: codes q + 128 with uint8 zero point 128, fp32 scale d:
    (the head too)          (q + 128 - 128) * d = d*q exactly (an fp16 times an int8 fits fp32's mantissa).
    Q8_0 token_embd      -> GatherBlockQuantized bits 8 (onnxruntime 1.32 takes uint8 data at 8 bits): the same
                            codes and scales, exact; with a tied head it reads the head's initializers (Reshape).
    F32/F16 1-D (norms)  -> stay the fp32 graph's, which equal them.

So every number the graph stores is the GGUF's, bit for bit (codes, d and m as fp32, Q8_0 codes + 128); what
differs from the fp32 graph of the dequantized weights is the order of fp32 rounding in the sums, and, at accuracy
level 4, the int8 activations of the MatMulNBits kernels. Anything else (Q4_K, Q6_K, Q5_*, ...) is an ExportError
naming the tensor and its type. The MatMuls in options.nodes_to_exclude (LoRA slots) stay float.

Why not the min as a float zero point (MatMulNBits takes zero points of the scales' type, computing
(q - zp) * scale, so zp = -m/d): measured with onnxruntime 1.32 on 2 cores, one 576x1536 MatMulNBits at M=1 takes
0.9-1.2 ms with float zero points at any accuracy level against 24 us (level 4) / 52 us (level 1) with uint8 ones,
and SmolLM2 decoded at 5 tok/s that way (fp32: 30). The body takes int4_accuracy_level, the 8-bit head
int8_accuracy_level: at level 1 an 8-bit 576x49152 MatMulNBits takes 150 ms a token (no fp32 kernel), at 4 1 ms.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import numpy as np

from training.export import ExportError, ExportOptions
from training import q8_embedding
from training.min_term import MinTerms
from training.model_sources import GGUF_SOURCE   # the record gguf_to_hf writes next to the weights

BLOCK = 32
MATMUL_TYPES = ("Q4_1", "Q8_0")
EMBEDDING_TYPES = ("Q8_0",)
FLOAT_TYPES = ("F32", "F16")
# GGUF tensor (blk.N.<part>) -> HF parameter (model.layers.N.<part>); the builder's MatMul names follow the HF ones
_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
# the builder's MatMul node (/model/layers.N/<path>/MatMul) -> the GGUF tensors it packs, in order (along N)
_NODES = {"attn/qkv_proj": ("attn_q", "attn_k", "attn_v"), "attn/q_proj": ("attn_q",), "attn/k_proj": ("attn_k",),
          "attn/v_proj": ("attn_v",), "attn/o_proj": ("attn_output",), "mlp/gate_up_proj": ("ffn_gate", "ffn_up"),
          "mlp/gate_proj": ("ffn_gate",), "mlp/up_proj": ("ffn_up",), "mlp/down_proj": ("ffn_down",)}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.weight"
    return None


@dataclass
class Blocks:
    """One GGUF tensor's blocks, rows in the HF order (llama.cpp's rope permutation of q/k rows undone):
    codes [rows, blocks, 32] (Q4_1: 0..15; Q8_0: -127..127), d [rows, blocks] and, for Q4_1, m [rows, blocks],
    both as fp16."""
    kind: str
    codes: np.ndarray
    d: np.ndarray
    m: np.ndarray | None = None

    def dequantized(self) -> np.ndarray:
        """d*q + m (Q4_1) or d*q (Q8_0) in fp32 from these blocks, rows x columns: for the rewrite to check its
        blocks against the fp32 graph (which holds gguf.quants' values, the same arithmetic)."""
        d = self.d.astype(np.float32)[..., None]
        w = d * self.codes.astype(np.float32)
        if self.m is not None:
            w = w + self.m.astype(np.float32)[..., None]
        return w.reshape(w.shape[0], -1)


def _unpermute(n_head: int):
    """Row order that undoes llama.cpp's q/k permutation (as transformers' reverse_permute_weights does)."""
    def order(rows: int) -> np.ndarray:
        idx = np.arange(rows)
        return idx.reshape(n_head, rows // n_head // 2, 2).swapaxes(2, 1).reshape(rows)
    return order


class Source:
    """A GGUF opened for import: its tensors by name, the head counts for the q/k permutation."""

    def __init__(self, path: pathlib.Path):
        import gguf

        self.path = pathlib.Path(path)
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except (OSError, ValueError) as e:
            raise ExportError(f"gguf_exact: cannot read {self.path}: {e}") from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self._field("general.architecture")
        if arch != "llama":
            raise ExportError(f"gguf_exact: {self.path.name} is a {arch!r} GGUF; only llama is imported")
        self.heads = int(self._field("llama.attention.head_count"))
        self.kv_heads = int(self._field("llama.attention.head_count_kv") or self.heads)
        self.tied = "output.weight" not in self.tensors

    def _field(self, key: str):
        f = self.reader.fields.get(key)
        return None if f is None else f.contents()

    def check_types(self) -> None:
        """ExportError naming the first tensor whose type cannot be imported exactly (or that has no HF name)."""
        for name, t in self.tensors.items():
            kind = t.tensor_type.name
            if hf_name(name) is None:
                raise ExportError(f"gguf_exact: {self.path.name} has tensor {name} ({kind}), which the importer "
                                  f"does not map to the model")
            allowed = (EMBEDDING_TYPES if name == "token_embd.weight" else FLOAT_TYPES if len(t.shape) == 1
                       else MATMUL_TYPES)
            if kind not in allowed:
                raise ExportError(f"gguf_exact: tensor {name} of {self.path.name} is {kind}, which cannot be imported "
                                  f"exactly (supported here: {', '.join(allowed)}); use another int4 recipe")

    def blocks(self, name: str) -> Blocks:
        t = self.tensors[name]
        kind = t.tensor_type.name
        raw = np.asarray(t.data)
        rows = raw.shape[0]
        if kind == "Q4_1":
            b = raw.reshape(rows, -1, 20)
            d, m = b[..., 0:2].copy().view(np.float16)[..., 0], b[..., 2:4].copy().view(np.float16)[..., 0]
            qs = b[..., 4:]   # byte j: value j in the low nibble, value j + 16 in the high one (ggml's layout)
            codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
            out = Blocks(kind, codes, d, m)
        elif kind == "Q8_0":
            b = raw.reshape(rows, -1, 34)
            out = Blocks(kind, b[..., 2:].copy().view(np.int8), b[..., 0:2].copy().view(np.float16)[..., 0])
        else:
            raise ExportError(f"gguf_exact: tensor {name} is {kind}, not a block type")
        heads = self.heads if ".attn_q." in name else self.kv_heads if ".attn_k." in name else None
        if heads:
            order = _unpermute(heads)(rows)
            out = Blocks(kind, out.codes[order], out.d[order], None if out.m is None else out.m[order])
        return out

    def dequantized(self, name: str) -> np.ndarray:
        """What transformers' GGUF loader makes of tensor `name`: gguf.quants.dequantize, q/k rows unpermuted
        (computed apart from `blocks`, so the rewrite's check of its blocks against the fp32 graph is a check)."""
        import gguf

        t = self.tensors[name]
        w = np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)
        if w.ndim == 1:
            return w
        heads = self.heads if ".attn_q." in name else self.kv_heads if ".attn_k." in name else None
        return w[_unpermute(heads)(w.shape[0])] if heads else w


def source_of(hf_dir: pathlib.Path) -> pathlib.Path:
    """The GGUF `hf_dir` was made from (GGUF_SOURCE), or ExportError saying why there is none."""
    rec = pathlib.Path(hf_dir) / GGUF_SOURCE
    if not rec.exists():
        raise ExportError(f"gguf_exact needs a GGUF source: {hf_dir} has no {GGUF_SOURCE} (it was not made from a "
                          f"GGUF by gguf_to_hf)")
    try:
        path = pathlib.Path(json.loads(rec.read_text())["gguf"])
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"gguf_exact: {rec} is not a GGUF source record: {e}") from e
    if not path.exists():
        raise ExportError(f"gguf_exact: {hf_dir} was made from {path}, which is not there any more")
    return path


def plan(hf_dir: pathlib.Path) -> Source:
    """The GGUF of `hf_dir`, checked for import before any build: every tensor of an importable type, and every
    HF weight equal to the GGUF's dequantized one. ExportError naming what stands in the way."""
    src = Source(source_of(hf_dir))
    src.check_types()
    compare_weights(hf_dir, src)
    return src


def compare_weights(hf_dir: pathlib.Path, src: Source) -> None:
    """ExportError naming the first weight of `hf_dir` that is not, bit for bit, the dequantized tensor of `src`
    (or a weight one side lacks)."""
    from safetensors import safe_open

    files = sorted(pathlib.Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise ExportError(f"gguf_exact: {hf_dir} has no safetensors weights to compare with {src.path.name}")
    seen = set()
    for f in files:
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                seen.add(key)
    wanted = {hf_name(n): n for n in src.tensors}
    extra = sorted(seen - set(wanted) - {"lm_head.weight"})
    missing = sorted(set(wanted) - seen)
    if extra or missing:
        raise ExportError(f"gguf_exact: the weights of {hf_dir} are not those of {src.path.name}: "
                          + (f"not in the GGUF: {', '.join(extra[:4])}; " if extra else "")
                          + (f"missing: {', '.join(missing[:4])}" if missing else ""))
    for f in files:
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                if key == "lm_head.weight" and src.tied:
                    g = src.dequantized("token_embd.weight")
                else:
                    g = src.dequantized(wanted[key])
                w = st.get_tensor(key)
                if w.dtype != np.float32 or w.size != g.size or not np.array_equal(w.reshape(g.shape), g):
                    diff = (f"{float(np.abs(w.astype(np.float32).reshape(g.shape) - g).max()):.3g}"
                            if w.size == g.size else f"shape {w.shape} vs {g.shape}")
                    raise ExportError(
                        f"gguf_exact: {key} in {hf_dir} differs from the dequantized {wanted.get(key, key)} of "
                        f"{src.path.name} ({w.dtype}, max |diff| {diff}): the weights were changed after "
                        f"conversion (fine-tuned or merged?), so the GGUF's blocks are not this model; use another "
                        f"int4 recipe")


def unavailable(hf_dir: pathlib.Path) -> str | None:
    """Why gguf_exact cannot be used for `hf_dir` (None: it can)."""
    try:
        plan(hf_dir)
    except ExportError as e:
        return str(e)
    return None


# ---- the graph rewrite -------------------------------------------------------------------------------
def _nbits_inputs(b: Blocks) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(bits, B [rows, blocks, bytes], scales [rows * blocks] fp32, uint8 zero points, the mins [blocks, rows] fp32
    or None) for MatMulNBits and, for Q4_1, the min term."""
    rows, nb = b.d.shape
    d = b.d.astype(np.float32).reshape(-1)
    if b.kind == "Q8_0":
        codes = (b.codes.astype(np.int16) + 128).astype(np.uint8)
        return 8, codes, d, np.full(rows * nb, 128, np.uint8), None
    codes = b.codes.astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    zp = np.zeros(rows * ((nb + 1) // 2), np.uint8)     # two 4-bit zero points a byte, all 0
    return 4, packed, d, zp, np.ascontiguousarray(b.m.astype(np.float32).T)


def _concat(parts: list[Blocks]) -> Blocks:
    kinds = {p.kind for p in parts}
    if len(kinds) != 1:   # one MatMulNBits has one bit width
        raise ExportError(f"gguf_exact: a packed MatMul mixes GGUF types {sorted(kinds)}")
    return Blocks(parts[0].kind, np.concatenate([p.codes for p in parts]), np.concatenate([p.d for p in parts]),
                  None if parts[0].m is None else np.concatenate([p.m for p in parts]))


def _node_tensors(node_name: str, tied: bool) -> list[str] | None:
    if node_name == "/lm_head/MatMul":
        return ["token_embd.weight" if tied else "output.weight"]
    if not node_name.startswith("/model/layers.") or not node_name.endswith("/MatMul"):
        return None
    layer, _, path = node_name[len("/model/layers."):-len("/MatMul")].partition("/")
    parts = _NODES.get(path)
    return [f"blk.{layer}.{p}.weight" for p in parts] if parts and layer.isdigit() else None


def rewrite(folder: pathlib.Path, src: Source, options: ExportOptions, log=print) -> dict:
    """Replaces, in folder/model.onnx (the builder's fp32 build), every MatMul weight by its GGUF blocks and the
    embedding by a GatherBlockQuantized of token_embd; nodes_to_exclude stay float. Returns counts per kind."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep = set(options.nodes_to_exclude)
    counts = {"MatMulNBits4": 0, "MatMulNBits8": 0, "GatherBlockQuantized8": 0, "float MatMul kept": 0}
    new_inits, drop, head = [], set(), None

    def nbits_node(node, tensors: list[str]):
        w = inits.get(node.input[1])
        if w is None:
            raise ExportError(f"gguf_exact: MatMul {node.name} has no weight initializer to replace")
        b = _concat([src.blocks(t) for t in tensors])
        fp32 = numpy_helper.to_array(w)          # [K, N]
        if not np.array_equal(fp32.T, b.dequantized()):
            raise ExportError(f"gguf_exact: the fp32 weight of {node.name} is not the dequantized "
                              f"{'+'.join(tensors)} of {src.path.name}")
        bits, packed, scales, zp, mins = _nbits_inputs(b)
        base = w.name
        new_inits.extend([numpy_helper.from_array(packed, f"{base}.gguf_q{bits}"),
                          numpy_helper.from_array(scales, f"{base}.gguf_scales"),
                          numpy_helper.from_array(zp, f"{base}.gguf_zero_points")])
        drop.add(base)
        k, n = fp32.shape
        acc = options.int4_accuracy_level if bits == 4 else options.int8_accuracy_level
        y = list(node.output) if mins is None else [f"{node.name}NBits/output_0"]
        out = [helper.make_node("MatMulNBits", [node.input[0], f"{base}.gguf_q{bits}", f"{base}.gguf_scales",
                                                f"{base}.gguf_zero_points"], y, name=f"{node.name}NBits" if mins
                                is not None else node.name, domain="com.microsoft", K=k, N=n, bits=bits,
                                block_size=BLOCK, accuracy_level=acc)]
        if mins is not None:   # + (sum of x over each 32-block) @ m
            out += terms.nodes(node.name, node.input[0], k, y[0], mins, node.output[0])
        counts[f"MatMulNBits{bits}"] += 1
        return out, (base, bits, packed.shape)

    terms = MinTerms(BLOCK, "/gguf_import")

    nodes = []
    for node in g.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            tensors = _node_tensors(node.name, src.tied)
            if node.name in keep:
                counts["float MatMul kept"] += 1
            elif tensors is None:
                raise ExportError(f"gguf_exact: MatMul {node.name} has no GGUF tensor to import (not a known "
                                  f"layer); exclude it or use another int4 recipe")
            else:
                replaced, info = nbits_node(node, tensors)
                if node.name == "/lm_head/MatMul":
                    head = info
                nodes.extend(replaced)
                continue
        nodes.append(node)

    # the embedding: Gather(input_ids) of the fp32 table (tied: a Transpose of the head's weight)
    gathers = [n for n in nodes if n.op_type == "Gather" and "input_ids" in n.input]
    if len(gathers) != 1:
        raise ExportError(f"gguf_exact: expected one embedding Gather of input_ids, found {len(gathers)}")
    gather = gathers[0]
    table = src.blocks("token_embd.weight")
    vocab, nb = table.d.shape
    emb = src.dequantized("token_embd.weight")
    producer = {o: n for n in nodes for o in n.output}.get(gather.input[0])
    fp32_table = (numpy_helper.to_array(inits[producer.input[0]]).T if producer is not None
                  and producer.op_type == "Transpose" else numpy_helper.to_array(inits[gather.input[0]]))
    if not np.array_equal(fp32_table, emb):
        raise ExportError(f"gguf_exact: the fp32 embedding is not the dequantized token_embd of {src.path.name}")
    extra_nodes = []
    if src.tied and head is not None and head[1] == 8:   # read the head's codes and scales: one copy of the table
        base = head[0]
        extra_nodes, shapes, (data, scales, zp) = q8_embedding.from_head(
            f"{base}.gguf_q8", f"{base}.gguf_scales", f"{base}.gguf_zero_points", vocab, nb * BLOCK)
        new_inits.extend(shapes)
    else:
        data, scales, zp = "model.embed_tokens.gguf_q8", "model.embed_tokens.gguf_scales", "model.embed_tokens.gguf_zp"
        new_inits.extend([
            numpy_helper.from_array((table.codes.astype(np.int16) + 128).astype(np.uint8).reshape(vocab, -1), data),
            numpy_helper.from_array(table.d.astype(np.float32), scales),
            numpy_helper.from_array(np.full((vocab, nb), 128, np.uint8), zp)])
    gbq = q8_embedding.node(data, gather.input[1], scales, zp, gather.output[0])
    counts["GatherBlockQuantized8"] += 1
    out_nodes = []
    for n in nodes:
        if n is gather:
            out_nodes.extend(extra_nodes + [gbq])
        elif n is producer and producer.op_type == "Transpose":
            continue
        else:
            out_nodes.append(n)
    if producer is None:
        drop.add(gather.input[0])
    used = {i for n in out_nodes for i in n.input}
    drop |= {name for name in inits if name not in used}
    del g.node[:]
    g.node.extend(out_nodes)
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits + terms.initializers)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    (folder / "model.onnx").unlink()
    (folder / "model.onnx.data").unlink(missing_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    log(f"  gguf_exact: imported {src.path.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return counts
