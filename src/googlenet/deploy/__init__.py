"""Deployment: export formats (ONNX, torch.export, safetensors) and torchvision weights in; the engines that
run an exported model are googlenet.engines, which evaluation and serving share."""
