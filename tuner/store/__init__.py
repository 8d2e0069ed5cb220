"""store — where a study lives: storage URLs and their secrets, the Optuna storage (the only place with engine
arguments), the budget lock, the reaper lease, and where checkpoints live on disk (and their atomic files).

May import: tuner.errors only (spec and store are one floor and do not import each other).
"""
