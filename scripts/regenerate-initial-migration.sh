#!/usr/bin/env bash
# Rewrites the initial migration from the models. Only for before the first
# release, while no database in the field carries the schema; afterwards add
# revisions with `alembic revision --autogenerate` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
rm -f core/migrations/versions/0001_initial_schema.py
.venv/bin/python - "$tmp" <<'PY'
import sys
from alembic import command
from core.migrate import alembic_config
command.revision(alembic_config(f"sqlite+aiosqlite:///{sys.argv[1]}/empty.db"), message="initial schema",
                 autogenerate=True, rev_id="0001")
PY
rm -rf "$tmp"
