"""`encoderlab sync <run-dir>`: send a run's tracking calls that missed its MLflow server (the journal in
<run-dir>/tracking/, left when `encoderlab train` exited with code 3) and set its final status.

    encoderlab sync outputs/runs/2026-01-31/12-00-00-quickstart-1a2b3c
    encoderlab sync outputs/runs/... --tracking-uri http://host:5000     (the server moved)

Each journaled call is sent once: running it again sends nothing twice. Exit code 0 when everything is
synced, 1 when the server is unreachable (nothing lost; run it again later).
"""

from __future__ import annotations

from pathlib import Path

from encoderlab.commands import command_parser
from encoderlab.errors import EncoderlabError


def main(argv: list[str]) -> int:
    p = command_parser("sync", __doc__)
    p.add_argument("run_dir", type=Path, help="the run directory that `encoderlab train` printed")
    p.add_argument("--tracking-uri", help="default: the tracking URI the run was created on")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    args = p.parse_args(argv)
    if not args.run_dir.is_dir():
        raise EncoderlabError(f"{args.run_dir} is not a directory: pass a run directory (outputs/runs/...).")

    from encoderlab.tracking_journal import sync_run_dir

    record, sent = sync_run_dir(args.run_dir.resolve(), args.tracking_uri, args.timeout)
    where = f"MLflow run {record['run_id']} at {record['tracking_uri']}"
    if sent.empty and not sent.missing:
        print(f"{where}: nothing to sync, everything was sent before.")
        return 0
    print(f"{where}: sent {sent.describe()}.")
    if sent.missing:
        print(
            f"warning: the server rejected {len(sent.missing)} journaled call(s) "
            f"({', '.join(sent.missing)}); they are listed with the reason in "
            f"{args.run_dir / 'tracking' / 'rejected.jsonl'}."
        )
    return 0
