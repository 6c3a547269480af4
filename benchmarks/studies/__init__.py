"""One-off studies whose results are recorded in docs/experiments/ and benchmarks/results/: kept so
that each recorded number can be rebuilt by its command, not part of the product's benchmarks."""
