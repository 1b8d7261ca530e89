"""Experiments over the pipeline: synthetic traces and EP sweeps."""
