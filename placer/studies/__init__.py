"""Experiments over the pipeline: synthetic traces, EP sweeps, the Dask cluster backend."""
