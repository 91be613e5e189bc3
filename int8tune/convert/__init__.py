"""Caffe -> ONNX conversion: a registry of one converter per Caffe layer type."""
