"""report — what people read: `tuner report`'s self-contained HTML page and PNGs (build.py), and optuna-dashboard
(dashboard.py).

May import: engine, fleet, data, spec, store, errors. Only the cli imports the report.
"""
