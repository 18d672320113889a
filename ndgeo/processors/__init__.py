"""Processors: what the engine runs per window (``classify``, ``index``, ``denoise``)."""
