"""docker-compose.yml and deploy/k8s (parsed: Docker and Kubernetes do not run here), the README's commands and
.ci/run."""

from __future__ import annotations

import re

import yaml
from sqlalchemy.engine import make_url

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


def test_every_tuner_service_reaches_postgresql_through_pgbouncer_in_transaction_mode():
    services = compose()["services"]
    bouncer = services["pgbouncer"]
    env = bouncer["environment"]
    assert env["POOL_MODE"] == "transaction" and env["AUTH_TYPE"] == "scram-sha-256"
    assert env["DB_HOST"] == "postgres" and env["DB_USER"] == "tuner" and env["DB_NAME"] == "tuner"
    assert "DB_PASSWORD" not in env and bouncer["env_file"] == ["tuner.env"]  # the password stays in tuner.env
    assert int(env["DEFAULT_POOL_SIZE"]) >= 2 * 2 + 2  # 2 lock waiters per worker (README, "PgBouncer")
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(bouncer["healthcheck"]["test"])
    tuner_services = {name: s for name, s in services.items() if s.get("image") == "tuner:latest"}
    assert set(tuner_services) == {"launch-study", "worker-gpu0", "worker-gpu1", "dashboard"}
    for s in tuner_services.values():
        assert s["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
        assert "postgres" not in s["depends_on"]
    example = dict(line.split("=", 1) for line in (REPO / "tuner.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    url = make_url(example["TUNER_STORAGE"])
    assert (url.host, url.port, url.database) == ("pgbouncer", int(env["LISTEN_PORT"]), env["DB_NAME"])
    assert url.password == example["DB_PASSWORD"] == example["POSTGRES_PASSWORD"]


def k8s() -> dict[tuple[str, str], dict]:
    docs = [d for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_k8s_workers_reach_postgresql_through_a_pgbouncer_in_transaction_mode():
    manifests = k8s()
    (container,) = manifests["Deployment", "pgbouncer"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POOL_MODE"]["value"] == "transaction" and env["AUTH_TYPE"]["value"] == "scram-sha-256"
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "tuner-storage", "key": "DB_PASSWORD"}
    assert int(env["DEFAULT_POOL_SIZE"]["value"]) >= 2 * 8 + 2  # 8 worker pods, 2 lock waiters each
    service = manifests["Service", "pgbouncer"]
    assert service["spec"]["selector"] == manifests["Deployment", "pgbouncer"]["spec"]["template"]["metadata"][
        "labels"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container["ports"][0]["name"]
    assert container["ports"][0]["containerPort"] == int(env["LISTEN_PORT"]["value"])

    secret = manifests["Secret", "tuner-storage"]["stringData"]
    url = make_url(secret["TUNER_STORAGE"])
    assert url.host.split(".")[0] == "pgbouncer" and url.port == port["port"]  # the Service, not PostgreSQL
    assert url.database == env["DB_NAME"]["value"] and url.username == env["DB_USER"]["value"]
    assert url.password == secret["DB_PASSWORD"] == "CHANGE_ME"  # a placeholder, never a real password
    workers = manifests["Job", "tuner-workers-digits"]["spec"]["template"]["spec"]["containers"]
    launch = manifests["Job", "tuner-launch-digits"]["spec"]["template"]["spec"]["containers"]
    for c in workers + launch:
        assert {"secretRef": {"name": "tuner-storage"}} in c["envFrom"]
        assert "TUNER_STORAGE" not in {e["name"] for e in c.get("env", [])}
    for path in (REPO / "deploy" / "k8s").glob("*.yaml"):
        # only the placeholders, in the Secret and its comment
        url_with_password = r"postgresql\+psycopg2://[^:\s]+:(?!(?:CHANGE_ME|PASSWORD)@)[^@\s]+@"
        assert not re.search(url_with_password, path.read_text()), path


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .*)\n```", text)


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    run, test = readme_commands()[:2]
    assert run.endswith("tuner run studies/digits.toml")
    assert test.endswith("python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci
