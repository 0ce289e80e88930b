"""XGBoost -> ONNX (onnxmltools) and ONNX probabilities (onnxruntime), for the parity check.

The exported graph gets one extra output, ``spam_probability`` ``[n, 1]`` (a
Slice of ``probabilities``), so Triton serves the same output name whether it
runs the file through the local Python backend or its own onnxruntime backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "spam_probability"


def export_onnx(model: Any, n_inputs: int, *, opset: int = 15) -> bytes:
    """The XGBClassifier as ONNX: float32 input ``[None, n_inputs]``, output spam_probability."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_xgboost(
        model, initial_types=[(INPUT_NAME, FloatTensorType([None, n_inputs]))], target_opset=opset
    )
    if not any(o.domain in ("", "ai.onnx") for o in onnx_model.opset_import):
        # The tree ensemble only needs ai.onnx.ml; the Slice below needs the default domain.
        onnx_model.opset_import.append(helper.make_opsetid("", opset))
    graph = onnx_model.graph
    probabilities = next(o.name for o in graph.output if o.name == "probabilities")
    for name, value in (("spamops_starts", 1), ("spamops_ends", 2), ("spamops_axes", 1)):
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
    graph.node.append(
        helper.make_node(
            "Slice",
            [probabilities, "spamops_starts", "spamops_ends", "spamops_axes"],
            [OUTPUT_NAME],
            name="spamops_spam_probability",
        )
    )
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(onnx_model)
    data: bytes = onnx_model.SerializeToString()
    return data


def onnx_spam_probability(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """P(spam) of each row with onnxruntime, float64 ``[n]``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (spam,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})
    return np.asarray(spam, dtype=np.float64)[:, 0]
