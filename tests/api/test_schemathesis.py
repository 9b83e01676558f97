"""Property-based run of schemathesis against the live api's /openapi.json.

Every check but `positive_data_acceptance` (schema-valid random bytes are not a drawing, so the
api rightly answers 422) must pass: no 5xx, no undocumented status, no response that contradicts
the schema, no ignored authentication. The number of examples is bounded to keep it near a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.api.conftest import API_KEY
from tests.servers import ApiServer

MAX_EXAMPLES = 100
SEED = 20261121


def test_schemathesis_finds_no_server_error_or_schema_violation(
    keyed_api: ApiServer, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    result = subprocess.run(
        [
            cli,
            "run",
            f"{keyed_api.url}/openapi.json",
            "--header",
            f"X-API-Key: {API_KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "2",
            "--generation-database",
            "none",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    server_errors = [r for r in keyed_api.log_records() if r.get("status", 0) >= 500]
    assert server_errors == []
