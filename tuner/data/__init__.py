"""data — the data path: a dataset (sources.py) is prepared once into a uint8 cache (cache.py), then served on the
training device, resident or streamed (loader.py), and augmented and normalised there (augment.py).

May import: spec (the [task] section, plug-ins), errors.
"""
