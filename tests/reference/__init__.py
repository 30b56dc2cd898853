"""Reference forward passes of medical CLIP models whose code does not install from the package index,
re-implemented here (our own code) from a reading of the upstream repositories named in each module."""
