"""Batch inference: the run report, the per-case writer, the output files, and the fault tolerance of the engine."""
