"""fleet — who runs a study: launch and lifecycle, the worker loop and its signals, recovery (heartbeats, the
reaper, retries and lineages), the schedulers that pause and resume trials (ASHA, PBT), retention, compute
budgets, worker processes, progress.

May import: data, spec, store, errors. It never imports the engine: a worker is handed its `make_objective`.
"""
