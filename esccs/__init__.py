"""ESCCS: land-cover scene classification under clouds, by multi-step optical -> optical + SAR transfer.

This module and :mod:`esccs.spec`, :mod:`esccs.errors` and :mod:`esccs.io` import no torch: the torch-free runtime
(``esccs.runtime``) shares them on machines that only have numpy, rasterio and an inference engine.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
