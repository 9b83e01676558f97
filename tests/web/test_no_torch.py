"""The web image has no torch: nothing the web app imports may need it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_web_app_runs_without_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import os
        os.environ.update(API_URL="http://127.0.0.1:9", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file("src/digit_predictor/web/app.py", default_timeout=30).run()
        assert not at.exception, at.exception
        assert at.title[0].value == "Draw a digit", [t.value for t in at.title]
        for page in ("views/history.py", "views/statistics.py"):
            at.switch_page(page).run()
            assert not at.exception, at.exception
        assert "torch" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
        print("ok")
        """
    )
    # The script by the relative path the containers use; no developer `.env` in this folder.
    (tmp_path / "src").symlink_to(ROOT / "src", target_is_directory=True)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
