"""Deployment: inference engines (PyTorch, ONNX Runtime, OpenVINO), export formats and torchvision interop."""
