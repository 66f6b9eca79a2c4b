"""Charts as inline SVG, drawn in Python: no chart library, no script (the dashboard's,
the what-if report's).

:func:`columns` draws stacked vertical bars (one column per label, one colour per
series), or with ``grouped=True`` the series side by side (before and after);
:func:`rows` horizontal bars (one per label). Both return a :class:`Chart` of shapes and
texts that the ``chart`` macro of ``_chart.html`` (in :data:`TEMPLATES`, beside this
module) turns into SVG, escaping every label. Colours are SVG presentation attributes,
which a strict Content-Security-Policy allows (inline ``style`` it would not).

Imports nothing of corral.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: The folder of the ``_chart.html`` template (a Jinja2 macro, ``chart``).
TEMPLATES: Final = Path(__file__).parent

#: Colours for series, in order (readable on white, told apart in grey).
PALETTE: Final = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
WIDTH: Final = 640
HEIGHT: Final = 240
#: Room for the axis labels.
LEFT: Final = 56
BOTTOM: Final = 44
TOP: Final = 12


@dataclass(frozen=True, kw_only=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str
    title: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True, kw_only=True, slots=True)
class Chart:
    """What the template draws; ``empty`` when there was nothing to draw."""

    title: str
    width: int
    height: int
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    empty: bool = False
    note: str = ""


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _number(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:,.2f}"
    if unit == "s":
        if value < 0.001:
            return f"{value * 1e6:.0f} µs"
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def columns(
    title: str,
    data: Sequence[tuple[str, Mapping[str, float]]],
    *,
    unit: str = "",
    note: str = "",
    grouped: Sequence[str] | None = None,
) -> Chart:
    """Stacked columns: ``data`` is ``(label, {series: value})`` per column, in order.
    ``grouped``: the series to draw side by side instead, in this order (each in its own
    colour, every one in the legend)."""
    if grouped is not None:
        series = list(grouped)
        top = max((v for _, parts in data for v in parts.values()), default=0.0)
    else:
        series = sorted({s for _, parts in data for s, v in parts.items() if v > 0})
        top = max((sum(parts.values()) for _, parts in data), default=0.0)
    if not data or top <= 0:
        return Chart(title=title, width=WIDTH, height=HEIGHT, empty=True, note=note)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM
    step = plot_w / len(data)
    width = min(48.0, max(1.0, step * 0.7))
    bar = width / len(series) if grouped is not None else width
    rects, texts = [], _y_axis(top, unit, plot_h)
    every = max(1, len(data) // 12)  # at most ~12 labels under the axis
    for i, (label, parts) in enumerate(data):
        x = LEFT + i * step + (step - width) / 2
        y = float(TOP + plot_h)
        for k, s in enumerate(series):
            value = parts.get(s, 0.0)
            if value <= 0:
                continue
            h = value / top * plot_h
            what = f"{label} · {s}" if len(series) > 1 else label
            name = f"{what}: {_number(value, unit)}"
            if grouped is not None:
                at, top_y = x + k * bar, TOP + plot_h - h
            else:
                y -= h
                at, top_y = x, y
            rects.append(Rect(x=at, y=top_y, w=bar, h=h, fill=colour(k), title=name))
        if i % every == 0:
            texts.append(Text(x=x + width / 2, y=TOP + plot_h + 16, text=label))
    shown = len(series) > 1 or grouped is not None
    legend = [(colour(i), s) for i, s in enumerate(series)] if shown else []
    return Chart(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        rects=rects,
        texts=texts,
        legend=legend,
        note=note,
    )


def _y_axis(top: float, unit: str, plot_h: float) -> list[Text]:
    return [
        Text(x=LEFT - 6, y=TOP + plot_h * (1 - f) + 4, text=_number(top * f, unit), anchor="end")
        for f in (0.0, 0.5, 1.0)
    ]


def rows(title: str, data: Sequence[tuple[str, float]], *, unit: str = "", note: str = "") -> Chart:
    """Horizontal bars, one per ``(label, value)``, largest first, at most 12."""
    shown = sorted((d for d in data if d[1] > 0), key=lambda d: (-d[1], d[0]))[:12]
    if not shown:
        return Chart(title=title, width=WIDTH, height=80, empty=True, note=note)
    line, label_w = 22, 180
    height = TOP + line * len(shown) + 8
    top = shown[0][1]
    plot_w = WIDTH - label_w - 90
    rects, texts = [], []
    for i, (label, value) in enumerate(shown):
        y = TOP + i * line
        w = max(1.0, value / top * plot_w)
        rects.append(
            Rect(
                x=label_w,
                y=y,
                w=w,
                h=line - 6,
                fill=colour(0),
                title=f"{label}: {_number(value, unit)}",
            )
        )
        texts.append(Text(x=label_w - 8, y=y + 12, text=label[:28], anchor="end"))
        texts.append(Text(x=label_w + w + 6, y=y + 12, text=_number(value, unit), anchor="start"))
    return Chart(title=title, width=WIDTH, height=height, rects=rects, texts=texts, note=note)
