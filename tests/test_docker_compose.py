"""docker-compose.yml and its .env.example parse and hold what the README promises.

No Docker engine runs in CI (and this machine's docker CLI has no compose
plugin), so the file is checked as YAML: services, the security password
coming from .env, and a build for the cascade image.
"""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env(service):
    items = compose()["services"][service].get("environment", [])
    return dict(i.split("=", 1) for i in items) if isinstance(items, list) else items


def test_services_and_images():
    s = compose()["services"]
    assert set(s) == {"opensearch", "dashboards", "redis", "cascade"}
    assert re.fullmatch(r"opensearchproject/opensearch:(2\.19\.\d+|3\.\d+\.\d+)", s["opensearch"]["image"])
    assert s["dashboards"]["profiles"] == ["dashboards"]  # optional: only with --profile dashboards
    assert s["redis"]["image"].startswith("redis:")
    assert s["cascade"]["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert set(s["cascade"]["depends_on"]) == {"opensearch", "redis"}


def test_security_plugin_password_comes_from_env_file():
    os_env = env("opensearch")
    assert os_env["discovery.type"] == "single-node"
    assert "DISABLE_SECURITY_PLUGIN" not in os_env  # the security plugin stays on
    assert os_env["OPENSEARCH_INITIAL_ADMIN_PASSWORD"].startswith("${OPENSEARCH_INITIAL_ADMIN_PASSWORD:?")
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["OPENSEARCH_INITIAL_ADMIN_PASSWORD"] == ""  # no password is shipped
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_uses_cpu_torch():
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
