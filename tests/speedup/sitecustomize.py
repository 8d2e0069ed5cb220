"""Training ~10x faster for one run of the suite (TUNER_TEST_SPEEDUP=10 python -m pytest): every Python process
the tests start finds this file on PYTHONPATH (conftest puts it there) and keeps one digits image in N.

Why: a test must create the condition it needs (a trial still running, a worker mid-study), never hope that the
machine is slow. Running the suite with trials that finish N times sooner shows which tests hoped. The product is
untouched: the patch replaces scikit-learn's load_digits, on first import of sklearn.datasets, with a subset.
Tests that assert accuracy (the demo's >= 0.95) are expected to miss it on a tenth of the data; nothing else is.
"""

import importlib.abc
import importlib.util
import os
import sys

_FACTOR = int(os.environ.get("TUNER_TEST_SPEEDUP", "1") or 1)


def _subset(load_digits):
    def load_fewer_digits(*args, **kwargs):
        digits = load_digits(*args, **kwargs)
        for key in ("data", "images", "target"):
            digits[key] = digits[key][::_FACTOR]
        return digits
    return load_fewer_digits


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches sklearn.datasets as it is imported, so processes that never load it pay nothing."""

    def find_spec(self, name, path, target=None):
        if name != "sklearn.datasets":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            module.load_digits = _subset(module.load_digits)
        spec.loader.exec_module = exec_module
        return spec


if _FACTOR > 1:
    sys.meta_path.insert(0, _PatchOnImport())
