"""spamops registry-bridge: gate, MLflow registry, ONNX export, Triton deployment, promotion."""
