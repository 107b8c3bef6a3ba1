"""Embed: the embedders, kbingest's own ONNX runtime and its attention-fusion rewrite."""
