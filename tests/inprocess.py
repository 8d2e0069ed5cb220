"""tuner's real Worker run inside the test process: cheaper than a worker process per case, and the same code
(what a worker process adds — signals, logging, the CLI — is tested with real processes elsewhere)."""

from __future__ import annotations

import contextlib
import signal

import optuna

from conftest import load
from tuner.spec.config import load_config


def serve_in_process(url: str, tmp_path, monkeypatch, text: str, during=contextlib.nullcontext) -> optuna.Study:
    """Launch the study and run tuner's real Worker (the real objective, on the digits) in this process until
    its budget is spent; `during()` is a context manager around the worker's run only (not the launch)."""
    import torch

    from tuner.engine.objective import make_objective
    from tuner.store.storage import make_storage
    from tuner.fleet.study import launch_study
    from tuner.fleet.worker import Worker

    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "study.toml"
    path.write_text(text)
    config = load_config(path)
    storage = make_storage(url)
    launch_study(storage, config)
    storage.engine.dispose()
    torch.set_num_threads(1)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}  # the Worker installs its own
    try:
        with during():
            code = Worker(url, lambda c: make_objective(c, torch.device("cpu"))).run(config.study.name)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert code == 0
    return load(url, config.study.name)


