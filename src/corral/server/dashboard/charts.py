"""Charts as inline SVG, drawn on the server: no chart library, no script.

:func:`columns` draws stacked vertical bars (one column per label, one colour per
series), :func:`rows` horizontal bars (one per label). Both return a :class:`Chart` of
shapes and texts that the ``_chart.html`` template turns into SVG, escaping every label.
Colours are SVG presentation attributes, which a strict Content-Security-Policy allows
(inline ``style`` it would not).

Imports nothing of corral.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

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
) -> Chart:
    """Stacked columns: ``data`` is ``(label, {series: value})`` per column, in order."""
    series = sorted({s for _, parts in data for s, v in parts.items() if v > 0})
    totals = [sum(parts.values()) for _, parts in data]
    top = max(totals, default=0.0)
    if not data or top <= 0:
        return Chart(title=title, width=WIDTH, height=HEIGHT, empty=True, note=note)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM
    step = plot_w / len(data)
    bar = min(48.0, max(1.0, step * 0.7))
    rects, texts = [], _y_axis(top, unit, plot_h)
    every = max(1, len(data) // 12)  # at most ~12 labels under the axis
    for i, (label, parts) in enumerate(data):
        x = LEFT + i * step + (step - bar) / 2
        y = float(TOP + plot_h)
        for s in series:
            value = parts.get(s, 0.0)
            if value <= 0:
                continue
            h = value / top * plot_h
            y -= h
            what = f"{label} · {s}" if len(series) > 1 else label
            name = f"{what}: {_number(value, unit)}"
            rects.append(Rect(x=x, y=y, w=bar, h=h, fill=colour(series.index(s)), title=name))
        if i % every == 0:
            texts.append(Text(x=x + bar / 2, y=TOP + plot_h + 16, text=label))
    legend = [(colour(i), s) for i, s in enumerate(series)] if len(series) > 1 else []
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
