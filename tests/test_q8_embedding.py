"""The hqq recipes' embedding as 8-bit blocks (training/q8_embedding.py), checked with real onnxruntime: a tied
embedding reads the 8-bit head's own codes and scales (no table of its own), an untied one gets its own Q8 blocks;
either way GatherBlockQuantized gives back exactly the dequantized blocks, and the model loads and decodes."""
from __future__ import annotations

import numpy as np

from tests.test_gguf_import import _gguf_blocks, gguf_hf, tiny_gguf  # noqa: F401 (fixtures: a tied tiny GGUF)
from training.export import ExportOptions, dir_size, export_onnx
from training.q8_embedding import q8_blocks
from training.quant_recipes import RECIPES

quiet = {"log": lambda *a: None}


def test_q8_blocks_recover_q8_0_codes_exactly_and_round_anything_else_within_half_a_step():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (6, 64))
    q[:, 0], q[:, 32] = 127, -127            # each 32-block reaches +-127, as Q8_0's absmax scale makes it
    d = rng.uniform(1e-3, 2e-2, (6, 2)).astype(np.float16).astype(np.float32)
    table = (q.reshape(6, 2, 32) * d[..., None]).reshape(6, 64).astype(np.float32)
    codes, s = q8_blocks(table)
    assert np.array_equal(codes.astype(np.int16) - 128, q) and np.array_equal(s, d)
    x = rng.normal(size=(5, 96)).astype(np.float32)
    x[1, :32] = 0                            # an all-zero block: scale 0, codes 128
    codes, s = q8_blocks(x)
    back = (codes.astype(np.float32) - 128).reshape(5, 3, 32) * s[..., None]
    assert (np.abs(back.reshape(5, 96) - x) <= s.repeat(32, axis=1) / 2 + 1e-7).all()
    assert s[1, 0] == 0 and (codes[1, :32] == 128).all()


def _graph(d):
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(d / "model.onnx")).graph
    return {n.name: n for n in g.node}, {i.name: numpy_helper.to_array(i) for i in g.initializer}


def _gather(gbq, nodes, inits, ids):
    """Runs the graph's GatherBlockQuantized (and the Reshapes it reads) alone in onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    need = [gbq] + [nodes[i.removesuffix("/output_0")] for i in gbq.input if i.endswith("/Reshape/output_0")]
    names = {i for n in need for i in n.input} - {gbq.input[1]}
    g = helper.make_graph(need[1:] + [gbq], "gbq",
                          [helper.make_tensor_value_info(gbq.input[1], onnx.TensorProto.INT64, [len(ids)])],
                          [helper.make_tensor_value_info(gbq.output[0], onnx.TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(inits[n], n) for n in names if n in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {gbq.input[1]: np.array(ids, np.int64)})[0]


def _decodes(d) -> list[int]:
    """Four greedy tokens of the export, through onnxruntime-genai."""
    import onnxruntime_genai as og

    model = og.Model(str(d))
    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=12, do_sample=False)
    gen = og.Generator(model, gp)
    gen.append_tokens(np.array(og.Tokenizer(model).encode("hello"), dtype=np.int32))
    tokens = []
    for _ in range(4):
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    return tokens


def test_a_tied_embedding_reads_the_8_bit_heads_codes_and_keeps_no_table_of_its_own(gguf_hf, tiny_gguf, tmp_path):  # noqa: F811
    lines = []
    d = export_onnx(gguf_hf, tmp_path / "hqq_mixed", RECIPES["hqq_mixed"].options(ExportOptions("fp32"), True),
                    log=lines.append)
    assert any("embedding: GatherBlockQuantized 8 bit, one copy with the tied head" in x for x in lines), lines
    nodes, inits = _graph(d)
    head, gbq = nodes["/lm_head/MatMul"], nodes["/model/embed_tokens/GatherBlockQuantized"]
    attrs = {a.name: a.i for a in head.attribute}
    assert head.op_type == "MatMulNBits" and attrs["bits"] == 8 and attrs["accuracy_level"] == 4
    vocab, k = attrs["N"], attrs["K"]
    reads = [nodes[gbq.input[i].removesuffix("/output_0")].input[0] for i in (0, 2, 3)]
    assert reads == list(head.input[1:4])   # one copy: the embedding reads the head's codes, scales, zero points
    assert not any(a.dtype == np.float32 and a.size == vocab * k for a in inits.values()), "a float table is left"
    assert not any(n.op_type == "Gather" and "input_ids" in n.input for n in nodes.values())
    codes, d_, _ = _gguf_blocks(tiny_gguf, "token_embd.weight")   # the GGUF's Q8_0 table:
    assert np.array_equal(inits[head.input[1]].astype(np.int16) - 128, codes)       # its own codes come back
    assert np.array_equal(inits[head.input[2]], d_.astype(np.float32).reshape(-1))
    ids = [0, 1, 7, vocab - 1]
    want = ((inits[head.input[1]].astype(np.float32) - 128) * inits[head.input[2]].reshape(vocab, -1, 1))
    assert np.array_equal(_gather(gbq, nodes, inits, ids), want.reshape(vocab, k)[ids])
    assert len(got := _decodes(d)) == 4 and all(0 <= t < vocab for t in got)


def test_an_untied_embedding_gets_its_own_8_bit_blocks_a_quarter_of_the_float_table(tiny_hf, tmp_path):
    from training.q8_embedding import PREFIX

    fp32 = export_onnx(tiny_hf, tmp_path / "fp32", ExportOptions("fp32"), **quiet)
    d = export_onnx(tiny_hf, tmp_path / "hqq", RECIPES["hqq"].options(ExportOptions("fp32")), **quiet)
    _, ref = _graph(fp32)
    table = ref["model.embed_tokens.weight"]
    nodes, inits = _graph(d)
    gbq = nodes["/model/embed_tokens/GatherBlockQuantized"]
    assert gbq.input[0] == f"{PREFIX}/q8_codes" and "model.embed_tokens.weight" not in inits
    codes, s = q8_blocks(table)
    assert np.array_equal(inits[gbq.input[0]], codes) and np.array_equal(inits[gbq.input[2]], s)
    ids = list(range(0, table.shape[0], 37))
    got = _gather(gbq, nodes, inits, ids)
    want = ((codes.astype(np.float32) - 128).reshape(len(table), -1, 32) * s[..., None]).reshape(table.shape)[ids]
    assert np.array_equal(got, want)
    assert codes.nbytes + s.nbytes < table.nbytes / 3.5 and dir_size(d) < dir_size(fp32)
    assert len(got := _decodes(d)) == 4 and all(0 <= t < len(table) for t in got)
