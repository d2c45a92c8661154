"""The local leaderboard, `submission/leaderboard.csv`: one row per zip (its sha256 and
name) evaluated on one test set (its data fingerprint) with one shift draw (the seeds),
with its local scores and, once recorded, the score the real server gave it - so the user
learns which local number predicts the server's.

The row's layout is here: BASE_COLUMNS, then per profile (shift.PROFILES' order) its
scores acc_/bacc_/f1_<profile> with _lo/_hi (95 % interval) and _min/_max (spread over
shift seeds), n_/seeds_/predict_seconds_<profile>, failed_<profile>; evaluation_row makes
one from an evaluation's metrics.

Evaluating again updates only that row and only the profiles evaluated; a profile that
fails keeps its earlier score, with the failed attempt beside it (`failed_<profile>`). A
row without a score for a profile it failed (a zip that crashes, times out or returns
nonsense) is listed but never ranked.

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

from . import shift, stats
from .cli import UserError
from .files import atomic_path
from .figures import cell_text, percent

BASE_COLUMNS = ("time", "zip", "zip_sha256", "status", "data", "data_sha256", "seed", "shift_code",
                "eval_dir", "init_seconds", "run_seconds", "server_score")
# Per profile p: <short>_<p> with <short>_<p>_lo / _hi (95 % interval) and n_<p>.
SCORE_KEYS = {"acc": "accuracy", "bacc": "balanced_accuracy", "f1": "macro_f1"}
FAMILY_PREFIX = "fam_"
FAILED_PREFIX = "failed_"  # failed_<profile>: the last failed attempt ("crashed at TIME"), "" once it succeeds
SUFFIXES = ("_lo", "_hi", "_min", "_max")
# What makes a row: the zip (content and name), the test set, the shift draw.
ROW_KEY = ("zip_sha256", "zip", "data_sha256", "seed")


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


def profiles_in(rows) -> list[str]:
    """Profiles with an accuracy column in any row, in the registry's order (shift.PROFILES),
    then alphabetically (a profile an older version had)."""
    found = {k[4:] for row in rows for k in row if k.startswith("acc_") and not k.endswith(SUFFIXES)}
    return [p for p in shift.PROFILES if p in found] + sorted(found - set(shift.PROFILES))


def local_scores(rows) -> list[str]:
    """Every local score column (acc_/bacc_/f1_<profile>): candidates for predicting the server."""
    found = {k for row in rows for k in row}
    return [f"{short}_{p}" for p in profiles_in(rows) for short in SCORE_KEYS if f"{short}_{p}" in found]


def _columns(rows) -> list[str]:
    seen = {k for row in rows for k in row}
    grouped = [f"{c}{suffix}" for c in local_scores(rows) for suffix in ("",) + SUFFIXES]
    grouped += [f"{prefix}_{p}" for p in profiles_in(rows) for prefix in ("n", "seeds", "predict_seconds")]
    grouped += [f"{FAILED_PREFIX}{p}" for p in shift.PROFILES]
    ordered = list(BASE_COLUMNS) + [c for c in grouped if c in seen and c not in BASE_COLUMNS]
    return ordered + sorted(seen - set(ordered))


def _cell(value) -> str:
    """A CSV cell: floats to 6 significant digits."""
    return cell_text(value, 6)


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


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(k) or "") for k in ROW_KEY)


def failures(row: dict) -> dict:
    """{profile: its last failed attempt} for the profiles whose last attempt failed."""
    return {k[len(FAILED_PREFIX):]: v for k, v in row.items() if k.startswith(FAILED_PREFIX) and v not in (None, "")}


def has_score(row: dict, profile: str) -> bool:
    return _float(row.get(f"acc_{profile}")) is not None


def row_status(row: dict) -> str:
    """"ok"; "ok; last attempt failed: ..." (earlier scores kept); "failed: ..." (a profile
    failed and has no score); or the row's own status when it has no evaluation."""
    failed = failures(row)
    if not failed:
        scored = any(k.startswith("acc_") and _float(v) is not None for k, v in row.items())
        return "ok" if scored else (row.get("status") or "not evaluated")
    text = ", ".join(f"{p} {what}" for p, what in failed.items())
    if all(has_score(row, p) for p in failed):
        return f"ok; last attempt failed: {text}"
    return f"failed: {text}"


def is_ranked(row: dict) -> bool:
    """Ranked: at least one score, and no failed profile without one."""
    return str(row.get("status") or "").startswith("ok") and any(
        k.startswith("acc_") and _float(v) is not None for k, v in row.items())


def record_evaluation(path, row: dict) -> dict:
    """Insert or update the row of (zip sha256, zip name, test set, shift seeds). Columns not
    in `row` (a profile not evaluated this time, a failed profile's earlier score, a
    recorded server score) keep their old values; the status is recomputed."""
    with _locked(path):
        rows = read_rows(path)
        merged = next((old for old in rows if row_key(old) == row_key(row)), None)
        if merged is None:
            merged = {}
            rows.append(merged)
        merged.update({k: v for k, v in row.items() if v is not None})
        merged["status"] = row_status(merged)
        write_rows(path, rows)
    return merged


def record_server(path, zip_sha256: str | None, zip_name: str, score: float, time: str) -> dict:
    """Store the score the real server gave a zip, in every row of it (one per test set).
    Found by sha256 (zip file given; rows under its name first, else any copy) or by name;
    a zip never evaluated locally gets a row with only its server score."""
    with _locked(path):
        rows = read_rows(path)
        matches = []
        if zip_sha256:
            same = [r for r in rows if r.get("zip_sha256") == zip_sha256]
            matches = [r for r in same if r.get("zip") == zip_name] or same
        else:
            matches = [r for r in rows if r.get("zip") == zip_name]
            if len({r.get("zip_sha256") for r in matches}) > 1:
                raise UserError(f"{zip_name}: zip: {len(matches)} leaderboard rows of different zips have this "
                                f"name; expected the zip file itself, so it can be told apart by sha256")
        if not matches and zip_sha256:
            matches = [{"time": time, "zip": zip_name, "zip_sha256": zip_sha256, "status": "not evaluated"}]
            rows.append(matches[0])
        elif not matches:
            raise UserError(f"{zip_name}: zip: not in the leaderboard and no such file; expected the "
                            f"path of the zip you uploaded")
        for row in matches:
            row["server_score"] = score
        write_rows(path, rows)
    return matches[0]


# -- an evaluation's row and what the command says about it ------------------------------

def evaluation_row(meta: dict, eval_dir, results: dict, run_seconds: float) -> dict:
    """The row of one evaluation (`meta`: what heads its metrics.json; `results`: profile ->
    metrics.json; `eval_dir`: its folder): per evaluated profile its scores with 95 % intervals
    (columns named generically: acc_<profile>, acc_<profile>_lo, ...), the spread over
    shift seeds, the sweep's worst families, the server-like family table. A failed profile
    writes no score columns (an earlier score of it stays), only `failed_<profile>`."""
    failed = [f"{p} {m['status']}" for p, m in results.items() if m["status"] != "ok"]
    any_ok = any(m["status"] == "ok" for m in results.values())
    # a run where everything failed leaves the time of the scores it keeps
    row = {"time": meta["time"] if any_ok else None, "zip": meta["zip"], "zip_sha256": meta["zip_sha256"],
           "status": "failed: " + ", ".join(failed) if failed else "ok", "data": meta["data"],
           "data_sha256": meta["data_sha256"][:16], "seed": " ".join(map(str, meta["seeds"])),
           "shift_code": meta["shift_code"], "eval_dir": str(eval_dir), "run_seconds": round(run_seconds, 1)}
    for profile, m in results.items():
        if m.get("init_seconds") is not None:
            row["init_seconds"] = round(m["init_seconds"], 2)
        if m["status"] != "ok":
            row[f"{FAILED_PREFIX}{profile}"] = f"{m['status']} at {meta['time']}"
            continue
        row[f"{FAILED_PREFIX}{profile}"] = ""
        for short, key in SCORE_KEYS.items():
            if key not in m:
                continue
            row[f"{short}_{profile}"] = m.get(key)
            ci = m.get(f"{key}_ci")
            row[f"{short}_{profile}_lo"], row[f"{short}_{profile}_hi"] = ci if ci else ("", "")
        row[f"n_{profile}"] = m.get("n")
        if m.get("seeds"):
            row[f"seeds_{profile}"] = " ".join(map(str, m["seeds"]))
            spread = m.get("accuracy_spread") or {}
            row[f"acc_{profile}_min"], row[f"acc_{profile}_max"] = spread.get("min", ""), spread.get("max", "")
        if profile != "sweep":
            row[f"predict_seconds_{profile}"] = m.get("predict_seconds")
    if "sweep" in results and results["sweep"]["status"] == "ok":
        row["sweep_worst"] = "; ".join(f"{f} {100 * a:.1f}" for f, a in results["sweep"]["worst_families"])
    if "server" in results and results["server"]["status"] == "ok":
        for family, cells in results["server"].get("families", {}).items():
            row[f"{FAMILY_PREFIX}{family}"] = cells["all"][0]
    return row


def placement_lines(row: dict, rows: list[dict], profiles, images: int, path, against=None) -> list[str]:
    """What local_eval says once a zip's row is recorded: its rank among the zips evaluated
    on the same test set (or why it is not ranked) with the estimates of `profiles`, and
    `against(best, row)` -> a line, for the best other zip whose evaluation folder is there."""
    same_set = ranking([r for r in rows if r.get("data_sha256") == row.get("data_sha256")])
    keys = [row_key(r) for r in same_set]
    if row_key(row) not in keys:
        return [f"leaderboard: {row.get('zip')} is listed, not ranked ({row.get('status')}) -> {path}"]
    shown = ", ".join(f"{shift.label(p)} {_estimate_and_spread(row, p)}" for p in profiles
                      if row.get(f"acc_{p}") not in (None, ""))
    lines = [f"leaderboard: {row.get('zip')} is #{keys.index(row_key(row)) + 1} of {len(same_set)} ranked on "
             f"this test set by server-like accuracy ({shown}; %, 95 % intervals over {images} images) -> {path}"]
    if row.get("status") != "ok":
        lines.append(f"leaderboard: {row.get('status')}")
    best = next((r for r in same_set if row_key(r) != row_key(row) and r.get("eval_dir")), None)
    if best is not None and against is not None:
        lines.append(against(best, row))
    return lines


def _estimate_and_spread(row, profile) -> str:
    text = estimate_text(row, profile)
    low, high = row.get(f"acc_{profile}_min"), row.get(f"acc_{profile}_max")
    if low not in (None, "") and high not in (None, ""):
        seeds = str(row.get(f"seeds_{profile}", "")).replace(" ", ",")
        text += f" (mean of shift seeds {seeds}; per seed {100 * float(low):.1f}-{100 * float(high):.1f})"
    return text


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def ranking(rows: list[dict], by: str = "acc_server") -> list[dict]:
    """The ranked rows (is_ranked) sorted by a local score, best first; rows without it
    last, by clean accuracy. Listed-only rows (failed, not evaluated) are not in it."""
    def key(row):
        value = _float(row.get(by))
        fallback = _float(row.get("acc_none"))
        return (value is None, -(value if value is not None else -1.0), -(fallback or 0.0))
    return sorted((r for r in rows if is_ranked(r)), key=key)


def listed_only(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not is_ranked(r)]


def server_fits(rows: list[dict]) -> dict:
    """{local score column: stats.ServerFit} over ranked rows having both it and a server
    score, on the one test set with the most server scores (scores on two test sets are
    not one scale)."""
    scored = [r for r in rows if is_ranked(r) and _float(r.get("server_score")) is not None]
    by_data: dict = {}
    for r in scored:
        by_data.setdefault(r.get("data_sha256") or "", []).append(r)
    rows = max(by_data.values(), key=len) if by_data else []
    fits = {}
    for column in local_scores(rows):
        pairs = [(_float(r.get(column)), _float(r.get("server_score"))) for r in rows]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            fits[column] = stats.ServerFit(*zip(*pairs))
    return fits


def best_fit(fits: dict):
    """(column, fit) whose leave-one-out error is smallest (rank correlation breaks ties), or None."""
    usable = [(c, f) for c, f in fits.items() if f.ok]
    if not usable:
        return None
    return min(usable, key=lambda cf: (round(cf[1].loo_error, 6), -np.nan_to_num(cf[1].rho, nan=-2)))


def estimate_text(row, profile) -> str:
    value = _float(row.get(f"acc_{profile}"))
    if value is None:
        return ""
    low, high = _float(row.get(f"acc_{profile}_lo")), _float(row.get(f"acc_{profile}_hi"))
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else "")


def spread_text(row, profile) -> str:
    low, high = _float(row.get(f"acc_{profile}_min")), _float(row.get(f"acc_{profile}_max"))
    seeds = row.get(f"seeds_{profile}") or ""
    if low is None or high is None:
        return ""
    return f"{100 * low:.1f}-{100 * high:.1f} (seeds {seeds.replace(' ', ',')})"


def format_leaderboard(rows: list[dict], by: str = "acc_server", compare=None) -> str:
    """The ranking as a text table: per profile the accuracy with its 95 % interval (and the
    spread over shift seeds), the recorded server score, the expected server score once
    three or more are recorded, and `compare(best_row, row)` -> text against the best zip
    on the same test set if given. Rows that are not ranked (failed, not evaluated) follow
    with "-" as their rank. With several test sets, ranks count within each."""
    out = io.StringIO()
    if not rows:
        return "leaderboard is empty: evaluate a zip with `python local_eval.py ZIP --data TEST`\n"
    test_sets = list(dict.fromkeys(r.get("data_sha256") or "" for r in rows))
    several = len(test_sets) > 1
    ranked = ranking(rows, by)
    ordered = ranked + listed_only(rows)
    if several:
        ordered.sort(key=lambda r: test_sets.index(r.get("data_sha256") or ""))  # stable: ranks kept within a set
    best_of = {}
    for r in ranked:
        best_of.setdefault(r.get("data_sha256") or "", r)
    profiles = profiles_in(rows)
    fits = server_fits(rows)
    best = best_fit(fits)
    headers = ["#", "zip"] + (["test set"] if several else []) + ["evaluated"]
    for p in profiles:
        headers.append(f"{shift.label(p)} %")
        if any(r.get(f"acc_{p}_min") for r in rows):
            headers.append(f"{shift.label(p)} per seed")
    if any(r.get("sweep_worst") for r in rows):
        headers.append("sweep worst 3")
    headers.append("server")
    if best:
        headers.append("expected server")
    compare = compare if len(ranked) > 1 else None
    if compare:
        headers.append("vs #1 (server-like, pt)")
    headers.append("status")
    table, counters = [], {}
    for row in ordered:
        data = row.get("data_sha256") or ""
        if is_ranked(row):
            counters[data] = counters.get(data, 0) + 1
            rank = str(counters[data])
        else:
            rank = "-"
        cells = [rank, row.get("zip", "")[:40]]
        if several:
            cells.append(f"{Path(str(row.get('data') or '?')).name[:24]} ({data[:8] or '?'})")
        cells.append((row.get("time") or "")[:16])
        for p in profiles:
            cells.append(estimate_text(row, p))
            if any(r.get(f"acc_{p}_min") for r in rows):
                cells.append(spread_text(row, p))
        if "sweep worst 3" in headers:
            cells.append(row.get("sweep_worst") or "")
        cells.append(_percent_text(row.get("server_score")))
        if best:
            local = _float(row.get(best[0]))
            if local is None or not is_ranked(row):
                cells.append("")
            else:
                expected, low, high = best[1].predict(local)
                cells.append(f"{100 * expected:.1f} [{100 * low:.1f}, {100 * high:.1f}]")
        if compare:
            top = best_of.get(data)
            cells.append("" if top is None or top is row or not is_ranked(row) else (compare(top, row) or ""))
        cells.append(row.get("status", ""))
        table.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip() + "\n")
    for r in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    out.write(f"(ranked by {by}; accuracies in %, [95 % interval over test images])\n")
    if any(not is_ranked(r) for r in rows):
        out.write("(#: - = listed, not ranked: no evaluation, or a profile failed and has no score)\n")
    n_server = sum(_float(r.get("server_score")) is not None for r in rows)
    if n_server < stats.MIN_SERVER_SCORES:
        out.write(f"{n_server} server score(s) recorded; with {stats.MIN_SERVER_SCORES} or more, each local "
                  f"score is fitted to the server's and an expected server score is shown here "
                  f"(python local_eval.py --record-server ZIP SCORE)\n")
        return out.getvalue()
    out.write("local score -> server score (leave-one-out over the recorded server scores):\n")
    for column, fit in fits.items():
        rho = "  n/a" if np.isnan(fit.rho) else f"{fit.rho:+.2f}"
        if fit.ok:
            detail = (f"{fit.kind} fit, LOO error {100 * fit.loo_error:.1f} pt "
                      f"(linear {100 * fit.loo_mae['linear']:.1f}, monotone {100 * fit.loo_mae['monotone']:.1f})")
        else:
            detail = f"no fit: {fit.reason}"
        mark = "  <- predicts best" if best and column == best[0] else ""
        out.write(f"  {column:<18} rho {rho}  (n={fit.n})  {detail}{mark}\n")
    if best:
        interval = "OLS 95 % prediction interval" if best[1].kind == "linear" else "+- t x LOO RMSE"
        out.write(f"expected server = {best[1].kind} fit of {best[0]} ({interval}); an expectation from "
                  f"{best[1].n} recorded scores, not a promise\n")
    return out.getvalue()


def _percent_text(value) -> str:
    v = percent(value, 1)
    return "" if v is None else f"{v:.1f}"


__all__ = ["BASE_COLUMNS", "SCORE_KEYS", "FAMILY_PREFIX", "FAILED_PREFIX", "ROW_KEY", "read_rows", "write_rows",
           "row_key", "row_status", "is_ranked", "record_evaluation", "record_server", "evaluation_row",
           "placement_lines", "ranking", "listed_only", "profiles_in", "local_scores", "server_fits", "best_fit",
           "format_leaderboard"]
