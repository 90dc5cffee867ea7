"""export.trt_lint on tiny hand-built ONNX graphs: clean graphs pass, each rule names the node."""

from __future__ import annotations

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import onnx
from onnx import TensorProto, helper, numpy_helper

from export.trt_lint import (TRT_10_3_MAX_OPSET, TRT_10_3_OPS, TRT_OPS_ADDED_AFTER_10_3, lint_file,
                             lint_for_tensorrt)

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=18, domains=(), functions=()):
    """A checked ModelProto: the lint only sees graphs ONNX itself accepts."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    onnx.checker.check_model(model)
    return model


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def dq_model(x_q: np.ndarray, x_type: int, zero_point=None, zp_type=None, opset=18, **attrs):
    """W_q (initializer) -> DequantizeLinear -> MatMul, the standard weight-only layout."""
    inits = [helper.make_tensor("w_q", x_type, list(x_q.shape), x_q.flatten().tolist()),
             numpy_helper.from_array(np.full(attrs.pop("scale_shape", [x_q.shape[1]]), 0.1, np.float32), "scale")]
    dq_inputs = ["w_q", "scale"]
    if zero_point is not None:
        zp = np.asarray(zero_point)
        if zp_type in (TensorProto.INT4, TensorProto.UINT4):
            inits.append(helper.make_tensor("zp", zp_type, list(zp.shape), zp.flatten().tolist()))
        else:  # raw_data, so that save_model can move it to an external file
            dtype = helper.tensor_dtype_to_np_dtype(zp_type)
            inits.append(numpy_helper.from_array(zp.astype(dtype), "zp"))
        dq_inputs.append("zp")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["w"], name="/lm/DequantizeLinear", **attrs),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="/lm/MatMul")]
    return make_model(nodes, [vi("x", [1, x_q.shape[0]])], [vi("y", [1, x_q.shape[1]])], inits, opset=opset)


# ----------------------------------------------------------------------------- clean graphs


def test_clean_matmul_softmax_layernorm_passes():
    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(4, np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="/attn/MatMul"),
             helper.make_node("Softmax", ["h"], ["p"], name="/attn/Softmax", axis=-1),
             helper.make_node("LayerNormalization", ["p", "gamma", "beta"], ["y"], name="/ln", axis=-1)]
    model = make_model(nodes, [vi("x", [2, 4])], [vi("y", [2, 4])], inits)
    assert lint_for_tensorrt(model) == []


def test_op_list_is_what_the_docs_mark_supported():
    assert len(TRT_10_3_OPS) == 150
    assert {"MatMul", "Softmax", "LayerNormalization", "DequantizeLinear", "DeformConv", "Gelu"} <= TRT_10_3_OPS
    for absent in ("QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "Unique",
                   "STFT", "RMSNormalization", "Attention"):
        assert absent not in TRT_10_3_OPS
    assert not TRT_10_3_OPS & set(TRT_OPS_ADDED_AFTER_10_3)


# ----------------------------------------------------------------------------- domains and op types


def test_com_microsoft_node_is_flagged_with_the_flavour_fix():
    nodes = [helper.make_node("FastGelu", ["x"], ["y"], name="/mlp/FastGelu", domain="com.microsoft")]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], domains=["com.microsoft"])
    [problem] = lint_for_tensorrt(model)
    assert "'/mlp/FastGelu'" in problem and "com.microsoft" in problem
    assert "ONNX Runtime contrib op" in problem and "--flavour standard" in problem


def test_other_domain_is_flagged():
    nodes = [helper.make_node("Foo", ["x"], ["y"], domain="my.ops")]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], domains=["my.ops"])
    [problem] = lint_for_tensorrt(model)
    assert "node #0 (Foo)" in problem and "'my.ops'" in problem


def test_local_function_body_is_walked_not_flagged():
    body = [helper.make_node("Unique", ["a"], ["b"])]
    fn = helper.make_function("my.fns", "Uniq", ["a"], ["b"], body, [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Uniq", ["x"], ["y"], name="/uniq", domain="my.fns")]
    model = make_model(nodes, [vi("x", [3])], [vi("y", [None])], domains=["my.fns"], functions=[fn])
    [problem] = lint_for_tensorrt(model)
    assert "function my.fns.Uniq" in problem and "(Unique)" in problem and "not supported" in problem


def test_qlinearmatmul_gets_the_qdq_fix():
    inits = [helper.make_tensor(n, t, [], [v]) for n, t, v in
             [("a_s", F, 0.1), ("a_z", TensorProto.INT8, 0), ("b_s", F, 0.1), ("b_z", TensorProto.INT8, 0),
              ("y_s", F, 0.1), ("y_z", TensorProto.INT8, 0)]]
    inits.append(helper.make_tensor("b", TensorProto.INT8, [2, 2], [1, 2, 3, 4]))
    nodes = [helper.make_node("QLinearMatMul", ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"],
                              name="/q/QLinearMatMul")]
    model = make_model(nodes, [vi("a", [1, 2], TensorProto.INT8)], [vi("y", [1, 2], TensorProto.INT8)], inits)
    [problem] = lint_for_tensorrt(model)
    assert "'/q/QLinearMatMul'" in problem and "integer-arithmetic" in problem
    assert "QuantizeLinear/DequantizeLinear" in problem


def test_unlisted_op_is_flagged():
    nodes = [helper.make_node("Unique", ["x"], ["y"], name="/dedup")]
    model = make_model(nodes, [vi("x", [3])], [vi("y", [None])])
    [problem] = lint_for_tensorrt(model)
    assert "'/dedup' (Unique)" in problem and "not supported by the TensorRT 10.3" in problem


def test_op_added_after_10_3_names_the_version_and_opset_23_is_too_new():
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "gamma")]
    nodes = [helper.make_node("RMSNormalization", ["x", "gamma"], ["y"], name="/norm", axis=-1)]
    model = make_model(nodes, [vi("x", [2, 4])], [vi("y", [2, 4])], inits, opset=23)
    problems = lint_for_tensorrt(model)
    assert len(problems) == 2
    assert "opset 23" in problems[0] and f"[9, {TRT_10_3_MAX_OPSET}]" in problems[0]
    assert "'/norm'" in problems[1] and "TensorRT >= 10.15" in problems[1]


def test_groupnorm_at_opset_21_is_flagged():
    inits = [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ("s", "b")]
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="/gn", num_groups=2)]
    model = make_model(nodes, [vi("x", [1, 4, 3])], [vi("y", [1, 4, 3])], inits, opset=21)
    [problem] = lint_for_tensorrt(model)
    assert "'/gn'" in problem and "10.9" in problem


# ----------------------------------------------------------------------------- Q/DQ


def test_int8_dq_with_zero_point_zero_passes():
    w = np.array([[1, -2], [3, -4]], np.int8)
    assert lint_for_tensorrt(dq_model(w, TensorProto.INT8, [0, 0], TensorProto.INT8, axis=1)) == []


def test_int8_dq_without_zero_point_passes():
    w = np.array([[1, -2], [3, -4]], np.int8)
    assert lint_for_tensorrt(dq_model(w, TensorProto.INT8, axis=1)) == []


def test_uint8_zero_point_is_flagged():
    w = np.array([[1, 2], [3, 4]], np.uint8)
    [problem] = lint_for_tensorrt(dq_model(w, TensorProto.UINT8, [0, 0], TensorProto.UINT8, axis=1))
    assert "'/lm/DequantizeLinear'" in problem and "UINT8" in problem
    assert "TensorRT needs symmetric quantization, zero point 0" in problem


def test_asymmetric_uint8_gets_both_problems():
    w = np.array([[1, 2], [3, 4]], np.uint8)
    problems = lint_for_tensorrt(dq_model(w, TensorProto.UINT8, [128, 128], TensorProto.UINT8, axis=1))
    assert len(problems) == 2
    assert "2 nonzero value(s) of 2" in problems[0] and "UINT8 is unsigned" in problems[1]


def test_nonzero_int8_zero_point_is_flagged():
    w = np.array([[1, -2], [3, -4]], np.int8)
    [problem] = lint_for_tensorrt(dq_model(w, TensorProto.INT8, [0, 3], TensorProto.INT8, axis=1))
    assert "zero point 'zp' has 1 nonzero value(s) of 2" in problem
    assert "TensorRT needs symmetric quantization, zero point 0" in problem


def test_blocked_int4_dq_at_opset_21_passes():
    w = np.array([[1, -2], [3, -4], [5, -6], [7, -8]], np.int8)  # [K=4, N=2], blocks of 2 along K
    model = dq_model(w, TensorProto.INT4, [[0, 0], [0, 0]], TensorProto.INT4, opset=21,
                     axis=0, block_size=2, scale_shape=[2, 2])
    assert lint_for_tensorrt(model) == []


def test_blocked_int8_dq_is_flagged():
    w = np.array([[1, -2], [3, -4], [5, -6], [7, -8]], np.int8)
    model = dq_model(w, TensorProto.INT8, opset=21, axis=0, block_size=2, scale_shape=[2, 2])
    [problem] = lint_for_tensorrt(model)
    assert "block_size" in problem and "INT8" in problem


def test_quantize_linear_without_zero_point_is_uint8_and_flagged():
    inits = [numpy_helper.from_array(np.float32(0.1), "s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="/act/Q"),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="/act/DQ")]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], inits)
    problems = lint_for_tensorrt(model)
    assert len(problems) == 1 and "'/act/Q'" in problems[0] and "UINT8" in problems[0]


def test_int4_activation_quantization_is_flagged():
    inits = [numpy_helper.from_array(np.float32(0.1), "s"),
             helper.make_tensor("z", TensorProto.INT4, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="/act/Q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="/act/DQ")]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], inits, opset=21)
    problems = lint_for_tensorrt(model)
    assert len(problems) == 2 and all("weight-only" in p for p in problems)


def test_runtime_scale_is_flagged():
    w = np.array([[1, -2], [3, -4]], np.int8)
    inits = [helper.make_tensor("w_q", TensorProto.INT8, [2, 2], w.flatten().tolist())]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"], name="/dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [vi("x", [1, 2]), vi("s", [])], [vi("y", [1, 2])], inits)
    [problem] = lint_for_tensorrt(model)
    assert "'/dq'" in problem and "scale 's' is computed at run time" in problem


def test_constant_node_scale_and_zero_point_pass():
    nodes = [helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.float16(0.1))),
             helper.make_node("Constant", [], ["z"], value=helper.make_tensor("z", TensorProto.INT8, [], [0])),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    model = make_model(nodes, [vi("x", [2], TensorProto.FLOAT16)], [vi("y", [2], TensorProto.FLOAT16)])
    assert lint_for_tensorrt(model) == []


# ----------------------------------------------------------------------------- subgraphs, files


def test_if_subgraph_is_walked():
    then_g = helper.make_graph([helper.make_node("FastGelu", ["x"], ["t"], name="/then/FastGelu",
                                                 domain="com.microsoft")], "then", [], [vi("t", [2])])
    else_g = helper.make_graph([helper.make_node("Unique", ["x"], ["e"], name="/else/Unique")],
                               "else", [], [vi("e", [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="/branch", then_branch=then_g, else_branch=else_g)]
    model = make_model(nodes, [vi("c", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])],
                       domains=["com.microsoft"])
    problems = sorted(lint_for_tensorrt(model))
    assert len(problems) == 2
    assert "node #0 '/branch' (If) > else_branch: node #0 '/else/Unique'" in problems[0]
    assert "node #0 '/branch' (If) > then_branch: node #0 '/then/FastGelu'" in problems[1]


def test_subgraph_sees_outer_initializers():
    w = helper.make_tensor("w_q", TensorProto.INT8, [2], [1, -1])
    inits = [w, numpy_helper.from_array(np.float32(0.5), "s"), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    body = helper.make_graph([helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["t"], name="/inner/DQ")],
                             "then", [], [vi("t", [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)]
    model = make_model(nodes, [vi("c", [], TensorProto.BOOL)], [vi("y", [2])], inits)
    assert lint_for_tensorrt(model) == []


def test_external_zero_point_is_read_only_with_base_dir(tmp_path):
    w = np.array([[1, -2], [3, -4]], np.int8)
    model = dq_model(w, TensorProto.INT8, [0, 5], TensorProto.INT8, axis=1)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    lazy = onnx.load(str(path), load_external_data=False)

    [problem] = lint_for_tensorrt(lazy)
    assert "external file 'm.onnx.data'" in problem and "base_dir" in problem

    [problem] = lint_for_tensorrt(lazy, base_dir=str(tmp_path))
    assert "nonzero" in problem
    zp = next(t for t in lazy.graph.initializer if t.name == "zp")
    assert zp.data_location == TensorProto.EXTERNAL and not zp.raw_data  # the model was not touched

    assert lint_file(path) == [problem]


def test_missing_external_file_is_reported(tmp_path):
    w = np.array([[1, -2], [3, -4]], np.int8)
    model = dq_model(w, TensorProto.INT8, [0, 0], TensorProto.INT8, axis=1)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    (tmp_path / "m.onnx.data").unlink()
    [problem] = lint_file(path)
    assert "cannot read external file 'm.onnx.data'" in problem


@pytest.mark.parametrize("opset", [8, 22])
def test_opset_outside_range_is_flagged(opset):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], opset=opset)
    [problem] = lint_for_tensorrt(model)
    assert f"opset {opset}" in problem and "re-export with opset_version" in problem
