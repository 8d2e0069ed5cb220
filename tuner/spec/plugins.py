"""Your own model and dataset: `[task] model = "mypkg.models:build"`, `dataset = "mypkg.data:load"`.

A plug-in is a "module:callable" name, imported on each worker (the module must be importable there: an installed
package, or a folder on PYTHONPATH). The signatures:

    build(hparams, image_shape, num_classes) -> torch.nn.Module
        hparams: a mapping of the trial's values, every [space] entry (sampled or constant, your own names too);
        image_shape: (channels, size, size) of the batches; num_classes: the number of classes.

    load(task) -> dict with
        "images":  uint8 array (N, C, S, S), S the side the model sees (square);
        "labels":  int array (N,), values 0..len(classes)-1;
        "classes": list of class names;
        optionally "test_images" / "test_labels": a test set of your own (else task.test_fraction is held out).
    task: the study's [task] section (task.data_dir, task.image_size, ... as you need them).
    It is called once per host, when the data is prepared into the cache; the cache key covers the loader
    module's source and the files under task.data_dir (if set): change either and it is prepared again.

`launch-study` imports them once, so a misspelt module or name, or a callable that cannot take these arguments,
is one line before anything is stored.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from tuner.errors import TunerError

# field -> the arguments its callable is called with (names for messages)
SIGNATURES = {"model": ("hparams", "image_shape", "num_classes"), "dataset": ("task",)}


def is_plugin(name: str) -> bool:
    return ":" in name


def load_plugin(spec: str, field: str) -> Callable[..., Any]:
    """Import "module:callable" for task.<field> and check that it can take its arguments; one-line errors."""
    module_name, _, attr = spec.partition(":")
    where = f"task.{field}"
    if not module_name or not attr:
        raise TunerError(f"{where}: {spec!r} is not of the form 'module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TunerError(f"{where}: cannot import module {module_name!r} ({exc}); it must be importable on this "
                         "host: an installed package or a folder on PYTHONPATH") from None
    except Exception as exc:  # the user's module raised while importing: theirs to fix, shown as one line
        raise TunerError(f"{where}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise TunerError(f"{where}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    args = SIGNATURES[field]
    if not callable(target):
        raise TunerError(f"{where}: {spec!r} is not callable")
    try:
        inspect.signature(target).bind(*args)
    except TypeError:
        raise TunerError(f"{where}: {spec!r} must take ({', '.join(args)}), but its signature is "
                         f"{inspect.signature(target)}") from None
    except ValueError:  # no signature to read (a builtin): trust it
        pass
    return target
