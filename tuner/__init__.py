"""tuner: a hyperparameter search service for PyTorch fine-tuning, built on Optuna.

The package is a house of wings, imports running downward only (tests/test_layout.py keeps it so):
cli -> report -> engine -> fleet -> data -> spec, store -> errors. Each wing's __init__ says what it owns.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Public module paths from before the wings, still imported by users' scripts (`from tuner.export import
# load_exported`, in exported models' help and older docs): the old name is the new module, not a copy.
_MOVED = {"tuner.export": "tuner.engine.export"}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 (importlib's protocol)
        return importlib.util.spec_from_loader(name, self) if name in _MOVED else None

    def create_module(self, spec):  # noqa: ANN001
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):  # noqa: ANN001 (already executed under its new name)
        pass


sys.meta_path.append(_MovedModuleFinder())
