# Triton Inference Server (NVIDIA's image, 24.10 = Triton 2.51.0 like the local
# stack) with its own onnxruntime backend. onnxruntime is added to the Python
# backend's interpreter as well, so the model.py flavour that the registry-bridge
# writes today runs too (spamops_registry_bridge.triton_model).
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "onnxruntime==1.20.1" "numpy<2" \
    && useradd --system --uid 10001 --create-home triton
USER 10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=10 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["tritonserver"]
