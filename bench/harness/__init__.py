"""Benchmark harness: runs forsun-box and forsun side by side on loopback ports."""
