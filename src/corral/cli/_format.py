"""How the commands write what they print: money, durations and times; and, from
:mod:`corral.cli._output`, JSON, consoles for tables and aligned plain columns, every one of
them made visible on its way out.

Imports the times and numbers of :mod:`corral.record.views` (the JSON the commands print
is written there); it formats values the commands have already read.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from corral.cli._output import SafeConsole as SafeConsole
from corral.cli._output import columns as columns
from corral.cli._output import console as console
from corral.cli._output import echo as echo
from corral.cli._output import print_json as print_json
from corral.record.views import iso as iso
from corral.record.views import iso_seconds as iso_seconds

#: Status colours, shared by the tables and the timeline.
STATUS_STYLE = {
    "ok": "green",
    "stopped": "yellow",
    "error": "red",
    "interrupted": "magenta",
    "running": "cyan",
}


def money(usd: Decimal) -> str:
    """``$0``, ``$0.0014``, ``$2.11``, ``$1,300.00``."""
    if usd == 0:
        return "$0"
    if abs(usd) < Decimal("0.01"):
        return f"${usd:.4f}"
    return f"${usd:,.2f}"


def local_time(stamp: str) -> str:
    """An ISO 8601 stamp as local time: ``11-24 09:12:05`` (``2025-11-24 09:12:05`` if not
    this year)."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    same_year = moment.year == datetime.now().astimezone().year
    return moment.strftime("%m-%d %H:%M:%S" if same_year else "%Y-%m-%d %H:%M:%S")


def cut(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def seconds(value: float) -> str:
    """``0 s``, ``0.4 ms``, ``1.49 s``, ``2 min 05 s``."""
    if value == 0:
        return "0 s"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    whole = round(value)
    return f"{whole // 60} min {whole % 60:02d} s"
