"""A clamd for `handin dev`, so a laptop run scans uploads like a cluster does.

Uses the machine's signature database when it has one (what freshclam or the
distribution put in /var/lib/clamav); otherwise a database holding only the
EICAR test signature, which proves the path end to end but catches nothing
real, and the banner says so. Never downloads signatures.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DATABASE = Path("/var/lib/clamav")
SIGNATURE_SUFFIXES = (".cvd", ".cld", ".cud")
# Split so this source file is not itself flagged by a scanner.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE_NAME = "Eicar-Test-Signature"


@dataclass(frozen=True)
class LocalClamd:
    command: list[str]
    socket_path: Path
    # Human text for the banner: what this clamd can catch.
    coverage: str


def clamd_binary() -> str | None:
    return shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)


def system_database(directory: Path = SYSTEM_DATABASE) -> Path | None:
    if directory.is_dir() and any(path.suffix in SIGNATURE_SUFFIXES for path in directory.iterdir()):
        return directory
    return None


def test_signature_database(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "handin-eicar.ndb").write_text(f"{EICAR_SIGNATURE_NAME}:0:*:{EICAR.hex()}\n")
    return directory


def prepare(work_dir: Path, database: Path | None = None) -> LocalClamd | None:
    """Write a clamd config under work_dir; None when clamd is not installed."""
    binary = clamd_binary()
    if binary is None:
        return None
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    database = database or system_database()
    if database is None:
        database = test_signature_database(work_dir / "db")
        coverage = "the EICAR test signature only (no signature database on this machine)"
    else:
        coverage = f"the signature database in {database}"
    socket_path = work_dir / "clamd.sock"
    config = work_dir / "clamd.conf"
    config.write_text(
        "\n".join(
            [
                f"DatabaseDirectory {database}",
                f"LocalSocket {socket_path}",
                f"PidFile {work_dir / 'clamd.pid'}",
                f"LogFile {work_dir / 'clamd.log'}",
                "Foreground yes",
                "StreamMaxLength 100M",
                "",
            ]
        )
    )
    return LocalClamd([binary, "--config-file", str(config)], socket_path, coverage)


def start(clamd: LocalClamd) -> subprocess.Popen[bytes]:
    return subprocess.Popen(clamd.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
