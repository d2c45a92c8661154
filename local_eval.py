"""Evaluate a submission zip like the competition server, on a distribution-shifted
local test, and keep a local leaderboard.

  python local_eval.py ZIP --data TEST [--split S] [--profile none server sweep]
                       [--seeds 1 2 3] [--time-limit 600]
  python local_eval.py --compare A.zip B.zip          # is B really better than A?
  python local_eval.py --record-server ZIP SCORE     # what the real server said
  python local_eval.py --leaderboard                  # ranking, expected server scores

Per profile (default: none, server and second_opinion) the zip runs in a separate process from another
working directory (bloodcells.ingestion), its predictions file is scored
(bloodcells.scoring) and written as submission/eval/<zip name>/<profile>/scores.json
with 95 % intervals (bloodcells.stats) and figures; submission/eval/<zip name>/report.html
shows them together, and submission/leaderboard.csv gets the zip's row. A shifted profile
is drawn once per shift seed (default 1, 2, 3: seeds training does not select epochs with)
and reported as the mean over the draws with its spread. Shifted sets are cached in
build/shift_cache so every submission meets the same images; that is what makes the
paired comparison (--compare, and against the leaderboard's best after each evaluation)
possible.

The command: bloodcells/local_eval.py (the evaluation: bloodcells.evaluate's evaluate_zip,
an EvalSettings in, the outcome back; the comparison bloodcells.compare; the ranking
bloodcells.leaderboard).
"""

from bloodcells.local_eval import main

if __name__ == "__main__":
    main()
