"""The local leaderboard, `submission/leaderboard.csv`: one row per evaluated zip
(keyed by its sha256), with its local scores and, once recorded, the score the real
server gave it - so the user learns which local number predicts the server's.

Every update is read-modify-write under a lock, written to a temporary file and renamed:
a killed or failed write leaves the previous leaderboard intact.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
from pathlib import Path

import numpy as np

from .cli import UserError
from .files import atomic_path

BASE_COLUMNS = (
    "time", "zip", "zip_sha256", "status", "data", "data_sha256", "seed", "shift_code",
    "acc_none", "acc_server", "acc_sweep", "bacc_none", "bacc_server", "f1_none", "f1_server",
    "init_seconds", "predict_seconds_none", "predict_seconds_server", "run_seconds", "server_score",
)
# Local numbers whose agreement with the server is reported.
LOCAL_SCORES = ("acc_none", "acc_server", "acc_sweep", "bacc_server", "f1_server")
FAMILY_PREFIX = "fam_"


def read_rows(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return []
            if "zip_sha256" not in reader.fieldnames:
                raise UserError(f"{path}: header: no 'zip_sha256' column; expected a leaderboard "
                                f"written by local_eval.py")
            return [dict(row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: unreadable ({exc}); expected a CSV leaderboard") from None


def write_rows(path, rows: list[dict]) -> None:
    """Write all rows to a temporary sibling, then rename it onto `path`."""
    columns = _columns(rows)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in columns})
                fh.flush()  # whatever happens next, only the temporary file is partial
            os.fsync(fh.fileno())


def _columns(rows) -> list[str]:
    seen = {k for row in rows for k in row}
    extra = sorted(k for k in seen if k not in BASE_COLUMNS)
    return list(BASE_COLUMNS) + extra


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


@contextlib.contextmanager
def _locked(path):
    """Serialise read-modify-write between concurrent local_eval runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_evaluation(path, row: dict) -> dict:
    """Insert or update the row for row['zip_sha256']. Columns not in `row` (e.g. a
    profile not evaluated this time, a recorded server score) keep their old values."""
    with _locked(path):
        rows = read_rows(path)
        for old in rows:
            if old.get("zip_sha256") == row["zip_sha256"]:
                old.update({k: v for k, v in row.items() if v is not None})
                merged = old
                break
        else:
            merged = dict(row)
            rows.append(merged)
        write_rows(path, rows)
    return merged


def record_server(path, zip_sha256: str | None, zip_name: str, score: float, time: str) -> dict:
    """Store the score the real server gave a zip. Found by sha256 (zip file given) or
    by name; a zip never evaluated locally gets a row with only its server score."""
    with _locked(path):
        rows = read_rows(path)
        matches = [r for r in rows if zip_sha256 and r.get("zip_sha256") == zip_sha256]
        if not matches and not zip_sha256:
            matches = [r for r in rows if r.get("zip") == zip_name]
            if len(matches) > 1:
                raise UserError(f"{zip_name}: zip: {len(matches)} leaderboard rows have this name; "
                                f"expected the zip file itself, so it can be told apart by sha256")
        if matches:
            row = matches[0]
        elif zip_sha256:
            row = {"time": time, "zip": zip_name, "zip_sha256": zip_sha256, "status": "not evaluated"}
            rows.append(row)
        else:
            raise UserError(f"{zip_name}: zip: not in the leaderboard and no such file; expected the "
                            f"path of the zip you uploaded")
        row["server_score"] = score
        write_rows(path, rows)
    return row


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def ranking(rows: list[dict], by: str = "acc_server") -> list[dict]:
    """Rows sorted by a local score (best first); rows without it go last."""
    def key(row):
        value = _float(row.get(by))
        fallback = _float(row.get("acc_none"))
        return (value is None, -(value if value is not None else -1.0), -(fallback or 0.0))
    return sorted(rows, key=key)


def spearman(x, y) -> float:
    """Spearman rank correlation with average ranks for ties (nan if undefined)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def server_agreement(rows: list[dict], minimum: int = 3) -> dict:
    """{local score column: (rho, n)} over rows having both it and a server score;
    only columns with at least `minimum` such rows."""
    out = {}
    for column in LOCAL_SCORES:
        pairs = [(_float(r.get(column)), _float(r.get("server_score"))) for r in rows]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if len(pairs) >= minimum:
            out[column] = (spearman(*zip(*pairs)), len(pairs))
    return out


def format_leaderboard(rows: list[dict], by: str = "acc_server") -> str:
    """The ranking as a text table, then (with >= 3 server scores) which local score
    tracks the server's best."""
    out = io.StringIO()
    if not rows:
        return "leaderboard is empty: evaluate a zip with `python local_eval.py ZIP --data TEST`\n"
    headers = ("#", "zip", "evaluated", "clean", "server-like", "sweep", "server", "status")
    table = []
    for rank, row in enumerate(ranking(rows, by), 1):
        table.append((str(rank), row.get("zip", "")[:40], (row.get("time") or "")[:16],
                      _pct(row.get("acc_none")), _pct(row.get("acc_server")), _pct(row.get("acc_sweep")),
                      _pct(row.get("server_score")), row.get("status", "")))
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip() + "\n")
    for r in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    out.write(f"(ranked by {by}; accuracies in %)\n")
    n_server = sum(_float(r.get("server_score")) is not None for r in rows)
    agreement = server_agreement(rows)
    if not agreement:
        out.write(f"{n_server} server score(s) recorded; with 3 or more, the rank correlation of each "
                  f"local score with the server's is shown here "
                  f"(python local_eval.py --record-server ZIP SCORE)\n")
    else:
        out.write("rank correlation (Spearman) of local scores with the server's:\n")
        best = max(agreement, key=lambda c: -2 if np.isnan(agreement[c][0]) else agreement[c][0])
        for column, (rho, n) in agreement.items():
            mark = "  <- trust this one" if column == best and not np.isnan(rho) else ""
            shown = "  n/a" if np.isnan(rho) else f"{rho:+.2f}"
            out.write(f"  {column:<12} rho {shown}  (n={n}){mark}\n")
    return out.getvalue()


def _pct(value) -> str:
    v = _float(value)
    return "" if v is None else f"{100 * v:.1f}"


__all__ = ["BASE_COLUMNS", "LOCAL_SCORES", "FAMILY_PREFIX", "read_rows", "write_rows", "record_evaluation",
           "record_server", "ranking", "spearman", "server_agreement", "format_leaderboard"]
