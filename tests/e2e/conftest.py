"""The kind end-to-end suite: a real cluster, real images, a real `helm install`.

Needs a Docker engine, kind and kubectl. Where they are missing the whole
suite is skipped, saying which one. scripts/e2e-kind.sh prepares a cluster and
runs this suite; run alone, the fixtures create the cluster, build and load
the images and install the release themselves.

Environment:
  HANDIN_E2E_CLUSTER      kind cluster name (default handin-e2e)
  HANDIN_E2E_SKIP_BUILD   1: the images are already loaded (scripts/e2e-kind.sh did it)
  HANDIN_E2E_KEEP         1: keep a cluster this suite created
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.cluster import Cluster, missing_prerequisite

RELEASE = "handin"
NAMESPACE = "handin-e2e"
_missing = missing_prerequisite()
SKIP_REASON = (
    f"kind end-to-end tests skipped: {_missing}. They need a Docker engine, kind and kubectl; "
    "run scripts/e2e-kind.sh on such a machine (CI: .github/workflows/e2e.yml)."
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        # The helpers' own tests (test_processes.py) need no cluster and run everywhere.
        if here in Path(item.fspath).parents and "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
            # Cluster operations are slow: a per-test timeout of its own.
            item.add_marker(pytest.mark.timeout(1200))
            if _missing:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def cluster(helm_binary: Path) -> Iterator[Cluster]:
    cluster = Cluster(os.environ.get("HANDIN_E2E_CLUSTER", "handin-e2e"), NAMESPACE, helm_binary)
    created = not cluster.exists()
    if created:
        cluster.create()
    try:
        if os.environ.get("HANDIN_E2E_SKIP_BUILD") != "1":
            cluster.build_and_load_images()
        yield cluster
    finally:
        if created and os.environ.get("HANDIN_E2E_KEEP") != "1":
            cluster.delete()


@pytest.fixture(scope="session")
def release(cluster: Cluster) -> str:
    """The release, installed with the kind values and ready (helm --wait)."""
    if not cluster.release_installed(RELEASE):
        cluster.install(RELEASE)
    return RELEASE


@pytest.fixture(scope="session")
def api_url(cluster: Cluster, release: str) -> Iterator[str]:
    with cluster.port_forward(f"{release}-api", 80) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def router_url(cluster: Cluster, release: str) -> Iterator[str]:
    with cluster.port_forward(f"{release}-router", 80) as port:
        yield f"ws://127.0.0.1:{port}/ws"


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)"')


@pytest.fixture(scope="session")
def public_origin(cluster: Cluster, release: str) -> str:
    """The origin the api accepts changes from: its HANDIN_PUBLIC_URL, as the release configured it."""
    url = urlsplit(cluster.get("configmap", f"{release}-config")["data"]["HANDIN_PUBLIC_URL"])
    return f"{url.scheme}://{url.netloc}"


def read_csrf_token(client: httpx.Client) -> str:
    """Load a page, as a browser would, and read the CSRF token it renders for this cookie and session."""
    page = client.get("/login")
    page.raise_for_status()
    found = CSRF_META.search(page.text)
    assert found, "/login carries no csrf-token meta tag"
    return found.group(1)


@pytest.fixture
def student(api_url: str, public_origin: str) -> Iterator[httpx.Client]:
    """An HTTP client logged in as the demo student, posting like the site's own pages.

    Its default headers carry the public Origin and the CSRF token the page rendered
    after login (the token is bound to the session); its jar the session and CSRF cookies.
    """
    import yaml

    demo = yaml.safe_load((Path(__file__).parents[2] / "charts/handin/values.yaml").read_text())["demo"]
    with httpx.Client(base_url=api_url, timeout=30, headers={"Origin": public_origin}) as client:
        client.headers["X-CSRF-Token"] = read_csrf_token(client)
        client.post(
            "/api/login", json={"email": demo["studentEmail"], "password": demo["studentPassword"]}
        ).raise_for_status()
        client.headers["X-CSRF-Token"] = read_csrf_token(client)
        yield client
