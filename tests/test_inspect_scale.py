"""benchmarks/inspect_scale.py at smoke size: it runs dicofun inspect on a
generated folder with unreadable files and appends a row with the wall
time, the peak RSS and the report's asset size (issue 29)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inspect_scale_benchmark_at_smoke_size(tmp_path):
  results = tmp_path / "inspect.json"
  results.write_text(json.dumps([{"benchmark": "inspect_quickstart"}]))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "inspect_scale.py"),
       "--num_images=60", "--image_size=32", "--unreadable=3",
       "--extra=image_size=32", f"--results={results}",
       f"--tmp={tmp_path}"],
      capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(results.read_text())
  assert rows[0] == {"benchmark": "inspect_quickstart"}  # Extended, kept.
  row = rows[1]
  assert row["benchmark"] == "inspect_scale"
  assert row["images"] == row["images_scored"] == 60
  assert row["defective"] == 3 and row["unreadable"] == 3
  assert row["checks"]["exit_0"]
  assert row["checks"]["errors_csv_names_the_unreadable"]
  assert row["checks"]["scores_csv_has_every_other_image"]
  assert 0 < row["wall_seconds"] < 900
  assert 50 < row["peak_rss_mb"] < 16 * 1024
  assert 0 < row["report_assets_mb"] < 60 * 60 / 5000
  assert row["report_bytes_per_row"] < 12_000
  assert row["command"].startswith("python -m dicofun inspect line --out=out")
  assert row["machine"] and len(row["commit"]) in (40, len("unknown"))
  assert row["goals_met"] == "n/a below 5000 images"
  # Nothing left behind but the results.
  assert sorted(os.listdir(tmp_path)) == ["inspect.json"]
