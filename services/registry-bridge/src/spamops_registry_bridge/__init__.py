"""spamops registry-bridge service: gate, MLflow registry, ONNX export, Triton deployment, promotion"""
