"""Ways in: tinygen's model file (`modelfile`), MIT tiny-training's pickles (`mit_import`), and
the bundled real data sets quantized as a model's input (`datasets`, `inputs`).
"""
