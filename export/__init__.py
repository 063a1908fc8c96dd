"""Model export (ONNX, INT8 ONNX, TensorRT). Installed as ``esccs.export``; heavy imports stay inside functions."""

__all__: list[str] = []
