"""The NumPy reference every generated program is held to, bit for bit: the int8 forward pass
(`forward`), integer training (`training`), and the float oracle for its gradients (`float_grad`).
"""
