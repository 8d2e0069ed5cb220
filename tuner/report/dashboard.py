"""optuna-dashboard over a storage object (never the URL, so the password is not handed to the web app)."""

from __future__ import annotations

import errno
import socket
from wsgiref.simple_server import WSGIServer, make_server

import optuna

from tuner.errors import TunerError


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6  # wsgiref's server is IPv4 only


def open_dashboard(storage: optuna.storages.BaseStorage, host: str, port: int) -> WSGIServer:
    """optuna-dashboard's WSGI app bound to host:port, ready for serve_forever().

    Binding happens here, before anything is announced, so a port in use is one TunerError. This is
    optuna_dashboard.run_server without bottle's start-up banner, which would print first.
    """
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    try:
        return make_server(host, port, app, server_class=_IPv6Server if ":" in host else WSGIServer)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise TunerError(f"port {port} on {host} is in use; choose another with --port") from None
        reason = exc.strerror or str(exc)  # EACCES below 1024, EADDRNOTAVAIL, an unknown host name
        raise TunerError(f"cannot listen on {host} port {port}: {reason}") from None
