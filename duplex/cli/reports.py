"""What every benchmark command does with its report besides printing its table: the ``--json``/``--plot`` paths
checked before any measuring, and the JSON written with the command line that made it."""

from __future__ import annotations

import json

from .common import check_output_path


def check_report_paths(args) -> None:
    """--json and --plot are checked before minutes of measuring, not after."""
    for path in (getattr(args, "json", None), getattr(args, "plot", None)):
        if path:
            check_output_path(path, audio=False)


def write_json(report: dict, args) -> None:
    """Write the report to ``--json`` (when given), with the command line that made it."""
    if not args.json:
        return
    report.setdefault("command", getattr(args, "command_line", None))
    with open(args.json, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2) + "\n")
