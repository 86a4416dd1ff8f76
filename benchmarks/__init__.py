"""Benchmarks (run as scripts) and the helpers tests share with them (``benchmarks.scoring``)."""
