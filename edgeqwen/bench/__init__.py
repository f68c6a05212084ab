"""Benchmarks users read: speed matrix, quality against the fp32 reference, reports and comparisons."""
