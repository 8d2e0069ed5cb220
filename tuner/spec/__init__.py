"""spec — what a study is: the study file as frozen dataclasses and every check of its values, the search space
(the only caller of trial.suggest_*), the pruner and sampler tables, plug-ins, preflight and the TOML writer.

May import: tuner.errors only. Everything above trusts what spec has checked.
"""
