"""The model as Triton serves it: ``model.onnx`` plus, locally, a Python-backend ``model.py``.

Locally the bundled Triton has no ONNX Runtime backend, so ``model.py`` runs
the ``model.onnx`` beside it with onnxruntime (requests of a dynamic batch are
concatenated into one run). On Kubernetes the same ``model.onnx`` runs on
Triton's ``onnxruntime`` backend: ``kubernetes_config`` writes that config.
Input ``input`` FP32 ``[n_inputs]``, output ``spam_probability`` FP32 ``[1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from spamops_runtime.triton_repo import TensorSpec, python_model_config

INPUT = "input"
OUTPUT = "spam_probability"

MODEL_PY = '''\
"""spamops: run model.onnx with onnxruntime inside Triton's Python backend."""
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = np.concatenate(arrays).astype(np.float32, copy=False)
        (spam,) = self.session.run(["spam_probability"], {self.input_name: batch})
        spam = np.ascontiguousarray(spam, dtype=np.float32)
        responses, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor("spam_probability", spam[start : start + n])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses
'''


def _tensors(n_inputs: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return [TensorSpec(INPUT, "TYPE_FP32", (n_inputs,))], [TensorSpec(OUTPUT, "TYPE_FP32", (1,))]


def local_config(
    name: str,
    n_inputs: int,
    versions: Sequence[int],
    *,
    max_batch_size: int,
    dynamic_batching: bool,
    max_queue_delay_microseconds: int,
    instance_count: int,
) -> str:
    """``config.pbtxt`` of the local Python-backend model serving ``versions``."""
    inputs, outputs = _tensors(n_inputs)
    return python_model_config(
        name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        max_queue_delay_microseconds=max_queue_delay_microseconds,
        instance_count=instance_count,
        versions=versions,
    )


def kubernetes_config(
    name: str, n_inputs: int, *, max_batch_size: int = 64, instance_count: int = 2
) -> str:
    """``config.pbtxt`` for Triton's own ``onnxruntime`` backend (no model.py).

    Same tensors as locally: the exported graph has a ``spam_probability`` output.
    """
    inputs, outputs = _tensors(n_inputs)
    return python_model_config(
        name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        instance_count=instance_count,
        backend="onnxruntime",
    )
