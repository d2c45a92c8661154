"""bloodcells.eval_report: report.html over every profile's metrics.json for one zip, from
constructed evaluation folders (what local_eval.py writes is tests/test_local_eval.py's)."""

from __future__ import annotations

import json

from bloodcells import CLASS_NAMES
from bloodcells.eval_report import worst_families_text, write_report

SHA = "ab" * 32


def metrics(folder, **fields):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"zip_sha256": SHA, "status": "ok", **fields}))


def test_the_report_shows_each_profile_of_this_zip_its_figures_and_failures(tmp_path):
    per_class = {name: {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 3} for name in CLASS_NAMES}
    metrics(tmp_path / "none", n=24, accuracy=0.875, accuracy_ci=[0.7, 0.95], per_class=per_class)
    (tmp_path / "none" / "confusion.png").write_bytes(b"\x89PNG")
    metrics(tmp_path / "server", status="crashed", message="predict: RuntimeError: weights went missing")
    (tmp_path / "server" / "ingestion.log").write_text("".join(f"log line {k}\n" for k in range(1, 51)))
    metrics(tmp_path / "second_opinion", accuracy=0.5, time="2026-01-02 03:04")
    (tmp_path / "second_opinion" / "failed_attempt.json").write_text(json.dumps(
        {"time": "2026-01-03 10:00", "status": "timeout", "message": "time limit of 2 s"}))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "metrics.json").write_text(json.dumps({"zip_sha256": "cd" * 32, "status": "ok"}))

    path = write_report(tmp_path, "pixel.zip", SHA)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    assert "<title>Local evaluation of pixel.zip</title>" in page and f"zip sha256 {SHA}" in page
    assert "Profile: none" in page and "Profile: server" in page and "Profile: second_opinion" in page
    assert "Profile: sweep" not in page  # another zip's evaluation in the same folder
    assert "<img src='none/confusion.png'" in page and "none/wrong.png" not in page  # only figures that exist
    assert "<td>87.5</td><td>70.0-95.0</td>" in page  # accuracy % and its interval in the summary
    assert "<caption>Per class</caption>" in page and "<td>25</td>" in page
    assert "FAILED (crashed): predict: RuntimeError: weights went missing" in page and "class='failed'" in page
    assert "log line 11\nlog line 12" in page and "log line 50" in page and "log line 10\n" not in page  # its tail
    assert ("The last attempt (2026-01-03 10:00) FAILED (timeout): time limit of 2 s; shown here is the earlier "
            "successful evaluation (2026-01-02 03:04)") in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_worst_families_as_text():
    assert worst_families_text({"worst_families": [["blur", 0.5], ["jpeg", 0.625]]}) == "blur 50.0 %, jpeg 62.5 %"
    assert worst_families_text({}) == ""
