"""Developer tools: benchmarks (``a2d2c bench``)."""
