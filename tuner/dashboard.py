"""optuna-dashboard over a storage object (never the URL, so the password is not handed to the web app)."""

from __future__ import annotations

import optuna


def serve_dashboard(storage: optuna.storages.BaseStorage, host: str, port: int) -> None:
    import optuna_dashboard

    optuna_dashboard.run_server(storage, host=host, port=port)
