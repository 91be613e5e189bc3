"""The int8 model: what is quantized and how (spec), blob statistics, calibrators, the calibration table, the
int8 simulation inside onnxruntime, and the file formats engines read."""
