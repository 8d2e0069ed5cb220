"""engine — how one trial trains: the objective (the adapter between an Optuna trial and fit()), fit() itself
(plain PyTorch, no Optuna), models, the device, the distillation teacher, export and the test-set evaluation.

May import: fleet (lineages, the schedulers' attribute names, a study's stored config and checkpoint place,
PBT schedules), data, spec, store, errors.
"""
