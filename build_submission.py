"""Build a submission zip and validate it before a submission is spent.

    python build_submission.py --weights weights/NAME [weights/OTHER ...] [--tta N] [--half]
    python build_submission.py --select weights/A weights/B weights/C --selection-data FILE [--selection-split S]
        (members chosen by greedy forward selection on shifted selection accuracy; never the test split)
    python build_submission.py --check submission/submission_YYMMDD_HHMMSS.zip [--python .venv-server/bin/python]

The zip's path is the last line printed. The command: bloodcells/build.py (packaging:
bloodcells/submission.py; the checks: bloodcells/preflight.py).
"""

from bloodcells.build import build_main

if __name__ == "__main__":
    build_main()
