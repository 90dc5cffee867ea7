"""Export pipeline: PyTorch reference modules -> ONNX graphs + manifest (an engine folder)."""
