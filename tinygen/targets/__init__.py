"""What code runs on: board data files (`boards`), the host C compiler (`hostbuild`) and the
Arm toolchain (`armbuild`).
"""
