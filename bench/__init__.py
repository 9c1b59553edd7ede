"""Benchmarks: SigPhi side by side with the standard transformers implementation, ratios from the same run."""
