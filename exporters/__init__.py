"""Exporters of HSCoNets: one module per format.

``onnx``      -> ``exporters.onnx``      (ONNX, opset 17, checked against PyTorch through onnxruntime)
"""
