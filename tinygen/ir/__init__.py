"""The intermediate representation: the model (`model`), how to build one (`builder`), what to train
(`scheme`), the C names derived from model names (`names`), and the Python halves of the
fixed-point C helpers (`quant` for `tg_nn_math.h`, `gradmath` for `tg_grad_math.h`).
"""
