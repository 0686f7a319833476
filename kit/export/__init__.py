"""Freezing stream modules into ONNX step graphs, and packing submissions."""
