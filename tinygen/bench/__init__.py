"""The benchmarks `tinygen bench ...` runs: each prints a table and writes JSON to bench-results/.
"""
