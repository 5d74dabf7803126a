"""C from templates: the forward kernels and model (`forward`), the training step (`training`), the
firmware project (`firmware`), and the build directory that holds them (`project`).
"""
