"""GeoTIFF I/O, SEN12MS names, label files and atomic writes (torch-free)."""
