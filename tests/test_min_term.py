"""training/min_term.py: HQQ's float zero points rewritten as uint8 zero points 0 plus an fp32 min term compute the
same MatMul (onnxruntime, real kernels), and a K that is not a multiple of the block keeps its float zero points."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.min_term import split_float_zero_points


def _hqq_model(k: int, n: int, seed: int = 0):
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="/m/MatMul")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q = MatMulNBitsQuantizer(model, block_size=32, algo_config=HQQWeightOnlyQuantConfig(block_size=32, bits=4))
    q.process()
    return q.model.model


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _float_zps(model) -> int:
    inits = {i.name: i for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3
               and inits[n.input[3]].data_type == TensorProto.FLOAT)


def test_the_split_computes_what_the_float_zero_points_did():
    model = _hqq_model(96, 40)
    assert _float_zps(model) == 1
    x = np.random.default_rng(1).standard_normal((1, 5, 96)).astype(np.float32)
    before = _run(model, x)
    split = onnx.ModelProto()
    split.CopyFrom(model)
    assert split_float_zero_points(split, log=lambda m: None) == 1
    assert _float_zps(split) == 0
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("ReduceSum") == 1 and "Add" in ops
    inits = {i.name: numpy_helper.to_array(i) for i in split.graph.initializer}
    nbits = next(n for n in split.graph.node if n.op_type == "MatMulNBits")
    assert inits[nbits.input[3]].dtype == np.uint8 and not inits[nbits.input[3]].any()
    after = _run(split, x)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    wrong = onnx.ModelProto()   # the test can fail: a min term of the wrong sign is far off
    wrong.CopyFrom(split)
    mins = next(i for i in wrong.graph.initializer if i.name.endswith("Min/mins"))
    mins.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(mins), mins.name))
    assert np.abs(_run(wrong, x) - before).max() > 1e-2 * np.abs(before).max()


def test_a_k_off_the_block_keeps_its_float_zero_points():
    model = _hqq_model(80, 16)   # 80 = 2.5 blocks of 32
    said = []
    x = np.random.default_rng(2).standard_normal((1, 2, 80)).astype(np.float32)
    before = _run(model, x)
    assert split_float_zero_points(model, log=said.append) == 0
    assert _float_zps(model) == 1 and "/m/MatMul" in said[0]
    assert np.array_equal(_run(model, x), before)


@pytest.mark.parametrize("k", [64])
def test_a_model_without_float_zero_points_is_untouched(k):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    w = np.ones((k, 8), np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])],
                          [numpy_helper.from_array(w, "w")])
    q = MatMulNBitsQuantizer(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), block_size=32)
    q.process()
    before = q.model.model.SerializeToString()
    assert split_float_zero_points(q.model.model) == 0
    assert q.model.model.SerializeToString() == before
