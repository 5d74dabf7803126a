"""Ready models: architectures and their pretraining recipes (`catalog`, `floatnn`), post-training
quantization (`ptq`), and resolving a `--model` argument (`resolve`).
"""
