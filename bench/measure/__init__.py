"""Measurements applied identically to every compressed model: FLOPs, peak memory and latency."""
