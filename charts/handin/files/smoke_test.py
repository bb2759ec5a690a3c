"""`helm test`: the api is ready and the router answers; with the demo data,
also log in as the demo student, upload a file and wait for `complete`.

It posts the way a browser on the public site does: every change carries
`Origin: <public origin>`, and the upload the CSRF token read from the page's
`<meta name="csrf-token">` with the cookie it belongs to (read again after
login, since the token is bound to the session). The pod reaches the api
Service over plain http while the site's cookies may be `Secure`, so cookies
are kept here by name, as the browser on the https site would send them.

Runs inside the api image (httpx is there) with only the standard library
besides. Exits non-zero with the last status seen when the submission does not
complete in time.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from http.cookies import SimpleCookie

import httpx

BASE_URL = os.environ["SMOKE_BASE_URL"].rstrip("/")
# The public URL's origin: the api accepts changes only from its own pages.
ORIGIN = os.environ.get("SMOKE_ORIGIN", BASE_URL).rstrip("/")
ROUTER_URL = os.environ.get("SMOKE_ROUTER_URL", "").rstrip("/")
# Unset without demo.enabled: there is no user to log in as.
EMAIL = os.environ.get("SMOKE_EMAIL", "")
PASSWORD = os.environ.get("SMOKE_PASSWORD", "")
ASSIGNMENT_ID = int(os.environ.get("SMOKE_ASSIGNMENT_ID", "1"))
TIMEOUT_SECONDS = float(os.environ.get("SMOKE_TIMEOUT_SECONDS", "300"))
FINAL = {"complete", "needs_attention", "quarantined"}
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)"')


class Browser:
    """An httpx client that keeps cookies by name and sends Origin and the page's CSRF token."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.cookies: dict[str, str] = {}
        self.token = ""

    def _headers(self, changes: bool) -> dict[str, str]:
        headers = {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        if changes:
            headers.update({"Origin": ORIGIN, "X-CSRF-Token": self.token})
        return headers

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        self.client.cookies.clear()  # ours only: httpx's jar would not send Secure ones over http
        return response

    def get(self, path: str) -> httpx.Response:
        return self._keep(self.client.get(path, headers=self._headers(False)))

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        return self._keep(self.client.post(path, headers=self._headers(True), **kwargs))  # type: ignore[arg-type]

    def open_page(self, path: str = "/login") -> None:
        """Load a page and read the CSRF token it carries for this cookie and session."""
        page = self.get(path)
        page.raise_for_status()
        found = CSRF_META.search(page.text)
        if found is None:
            sys.exit(f"{path} carries no csrf-token meta tag")
        self.token = found.group(1)


def wait_until_ok(client: httpx.Client, url: str, deadline: float) -> None:
    while True:
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{url} never answered 200")
        time.sleep(1)


def main() -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    with httpx.Client(base_url=BASE_URL, timeout=30) as client:
        wait_until_ok(client, f"{BASE_URL}/readyz", deadline)
        print("api ready", flush=True)
        if ROUTER_URL:
            wait_until_ok(client, f"{ROUTER_URL}/healthz", deadline)
            print("router answers", flush=True)
        if not EMAIL:
            print("no demo data (demo.enabled false): readiness checked, no upload", flush=True)
            return
        browser = Browser(client)
        browser.open_page()
        login = browser.post("/api/login", json={"email": EMAIL, "password": PASSWORD})
        if login.status_code != 200:
            sys.exit(f"login answered {login.status_code}: {login.text}")
        browser.open_page()  # the token is bound to the session the login started
        sample = f"helm test upload at {time.time()}\n".encode() * 20
        upload = browser.post(
            f"/api/assignments/{ASSIGNMENT_ID}/submissions",
            files={"file": ("helm-test.txt", sample, "text/plain")},
        )
        if upload.status_code != 202:
            sys.exit(f"upload answered {upload.status_code}: {upload.text}")
        accepted = upload.json()
        print(f"accepted submission {accepted['id']} on topic {accepted['topic']}", flush=True)
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            status = browser.get(f"/api/submissions/{accepted['id']}").raise_for_status().json()
            if status.get("status") in FINAL:
                break
            time.sleep(1)
        print(json.dumps(status, indent=2, default=str), flush=True)
        if status.get("status") != "complete":
            sys.exit(f"submission {accepted['id']} ended as {status.get('status')!r}, expected 'complete'")
        print("submission complete", flush=True)


if __name__ == "__main__":
    main()
