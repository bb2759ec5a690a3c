"""`helm test`: log in as the demo student, upload a file, wait for `complete`.

Runs inside the api image (httpx is there) with only the standard library
besides. Exits non-zero with the last status seen when the submission does not
complete in time.
"""

from __future__ import annotations

import json
import os
import sys
import time

import httpx

BASE_URL = os.environ["SMOKE_BASE_URL"].rstrip("/")
EMAIL = os.environ["SMOKE_EMAIL"]
PASSWORD = os.environ["SMOKE_PASSWORD"]
ASSIGNMENT_ID = int(os.environ.get("SMOKE_ASSIGNMENT_ID", "1"))
TIMEOUT_SECONDS = float(os.environ.get("SMOKE_TIMEOUT_SECONDS", "300"))
FINAL = {"complete", "needs_attention", "quarantined"}


def wait_until_ready(client: httpx.Client, deadline: float) -> None:
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"api at {BASE_URL} never became ready")
        time.sleep(1)


def main() -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    with httpx.Client(base_url=BASE_URL, timeout=30) as client:
        wait_until_ready(client, deadline)
        login = client.post("/api/login", json={"email": EMAIL, "password": PASSWORD})
        login.raise_for_status()
        sample = f"helm test upload at {time.time()}\n".encode() * 20
        upload = client.post(
            f"/api/assignments/{ASSIGNMENT_ID}/submissions",
            files={"file": ("helm-test.txt", sample, "text/plain")},
        )
        if upload.status_code != 202:
            sys.exit(f"upload answered {upload.status_code}: {upload.text}")
        accepted = upload.json()
        print(f"accepted submission {accepted['id']} on topic {accepted['topic']}", flush=True)
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            status = client.get(f"/api/submissions/{accepted['id']}").raise_for_status().json()
            if status.get("status") in FINAL:
                break
            time.sleep(1)
        print(json.dumps(status, indent=2, default=str), flush=True)
        if status.get("status") != "complete":
            sys.exit(f"submission {accepted['id']} ended as {status.get('status')!r}, expected 'complete'")
        print("submission complete", flush=True)


if __name__ == "__main__":
    main()
