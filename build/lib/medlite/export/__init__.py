"""Export to the deployment format. ONNX is the contract; LiteRT/TFLite is an optional extra."""
