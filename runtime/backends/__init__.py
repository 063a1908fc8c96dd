"""Inference engines behind :class:`esccs.runtime.model.Backend`; each module imports its engine lazily.

``load(path, device, threads, **options) -> (ModelInfo, Backend)`` is each module's one entry point.
"""
