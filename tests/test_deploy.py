"""docker-compose.yml (parsed: Docker does not run here), the README's commands and .ci/run."""

from __future__ import annotations

import re

import yaml

from conftest import REPO


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_postgres_has_a_healthcheck_and_no_password_in_the_file():
    services = compose()["services"]
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "tuner.env" in pg["env_file"]
    assert "POSTGRES_PASSWORD" not in pg.get("environment", {})
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"postgresql\+psycopg2://[^:\s]+:[^@\s]+@", text), "a URL with a password in compose"


def test_the_dashboard_is_published_on_loopback_only():
    ports = compose()["services"]["dashboard"]["ports"]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)


def test_each_worker_requests_one_gpu_and_waits_for_the_launch():
    services = compose()["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) == 2
    seen = set()
    for s in workers.values():
        (device,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
        seen.add(device["device_ids"][0])
        assert s["command"][:2] == ["tuner", "worker"]
        assert s["depends_on"]["launch-study"]["condition"] == "service_completed_successfully"
        assert s["env_file"] == ["tuner.env"]
    assert seen == {"0", "1"}
    assert services["launch-study"]["restart"] == "no"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .*)\n```", text)


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    run, test = readme_commands()[:2]
    assert run.endswith("tuner run studies/digits.toml")
    assert test.endswith("python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci
