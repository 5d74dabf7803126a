"""Choosing what to train: Fisher-potential selection under the memory budget (`selection`) and
channel reordering (`reorder`).
"""
