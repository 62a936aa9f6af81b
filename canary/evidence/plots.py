"""Inline SVG plots of a dossier: the traffic share over time, and one check's values over a
step's evaluations. PURE: text in, text out; no fonts, images or scripts from anywhere.

Every plot reads in black and white too: each series has its own line style and marker
shape besides its colour, and events carry numbers that the report's key explains. Times
are UTC. Every piece of text that comes from the dossier is HTML-escaped here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from canary.evidence.dossier import CheckHistory, Dossier, Evaluation, LoggedRecord, TrafficPoint

__all__ = [
    "BASELINE_COLOUR",
    "CANARY_COLOUR",
    "LIMIT_COLOUR",
    "MAX_PLOTTED",
    "METRIC_BACKGROUND",
    "STABLE_COLOUR",
    "STATISTIC_COLOUR",
    "TRAFFIC_BACKGROUND",
    "Marker",
    "downsample",
    "format_number",
    "markers_of",
    "metric_plot",
    "statistic_plot",
    "time_ticks",
    "traffic_plot",
    "value_ticks",
]

# Colour-blind-safe colours (Okabe-Ito), each with its own line style and marker too.
STABLE_COLOUR: Final = "#0072B2"  # blue: the stable revision, and the baseline
BASELINE_COLOUR: Final = STABLE_COLOUR
CANARY_COLOUR: Final = "#D55E00"  # vermillion: the canary
OTHER_COLOURS: Final = ("#CC79A7", "#56B4E9", "#E69F00", "#999999")
STATISTIC_COLOUR: Final = "#7B3294"
LIMIT_COLOUR: Final = "#222222"
FAILED_COLOUR: Final = "#C00000"
PASSED_COLOUR: Final = "#009E73"
TRAFFIC_BACKGROUND: Final = "#F2F6FB"  # the plot areas' tints, told apart on a screenshot
METRIC_BACKGROUND: Final = "#FBF6EF"
GRID_COLOUR: Final = "#C8C8C8"

MAX_PLOTTED: Final = 150
"""At most this many evaluations are drawn in one plot; the tables keep them all."""

MAX_MARKERS: Final = 40
"""At most this many events are marked on the traffic plot (the record index has all)."""

_WIDTH: Final = 960
_LEFT: Final = 70
_RIGHT: Final = 24
_LABEL_MAX: Final = 56


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, limit: int = _LABEL_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _c(value: float) -> str:
    """A coordinate, written the same way every time."""
    return f"{value:.1f}"


def format_number(value: float | None) -> str:
    """A measured value for people: four significant digits; NaN and ±Inf as words."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


# --------------------------------------------------------------------------------------------
# axes
# --------------------------------------------------------------------------------------------

_TICK_STEPS: Final = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000,
)  # fmt: skip
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def time_ticks(start: datetime, end: datetime, target: int = 7) -> list[tuple[datetime, str]]:
    """Round UTC times between ``start`` and ``end`` (about ``target`` of them), labelled
    ``HH:MM`` (``HH:MM:SS`` below a minute apart; with the date when the span crosses a
    day)."""
    span = max((end - start).total_seconds(), 1.0)
    step = next((s for s in _TICK_STEPS if span / s <= target), _TICK_STEPS[-1])
    offset = (start - _EPOCH).total_seconds()
    first = _EPOCH + timedelta(seconds=math.ceil(offset / step) * step)
    several_days = start.astimezone(UTC).date() != end.astimezone(UTC).date()
    if step >= 86400:
        pattern = "%Y-%m-%d"
    elif several_days:
        pattern = "%m-%d %H:%M"
    elif step < 60:
        pattern = "%H:%M:%S"
    else:
        pattern = "%H:%M"
    ticks: list[tuple[datetime, str]] = []
    at = first
    while at <= end and len(ticks) < 4 * target:
        ticks.append((at, at.astimezone(UTC).strftime(pattern)))
        at += timedelta(seconds=step)
    return ticks


def value_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round values covering ``low`` to ``high`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(target - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


@dataclass(frozen=True)
class _Frame:
    """The plot area of an SVG and its scales."""

    top: float
    height: float
    start: datetime
    end: datetime
    low: float
    high: float
    width: float = _WIDTH - _LEFT - _RIGHT
    left: float = _LEFT

    def x(self, at: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        share = (at - self.start).total_seconds() / span if span > 0 else 0.5
        return self.left + min(max(share, 0.0), 1.0) * self.width

    def y(self, value: float) -> float:
        span = self.high - self.low
        share = (value - self.low) / span if span > 0 else 0.5
        return self.top + self.height - min(max(share, 0.0), 1.0) * self.height

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def right(self) -> float:
        return self.left + self.width


def _time_range(times: Sequence[datetime]) -> tuple[datetime, datetime]:
    start, end = min(times), max(times)
    span = end - start
    pad = max(span * 0.04, timedelta(seconds=5)) if span > timedelta(0) else timedelta(seconds=30)
    return start - pad, end + pad


def _axes(frame: _Frame, y_labels: Sequence[tuple[float, str]], y_title: str) -> list[str]:
    parts = [
        f'<rect x="{_c(frame.left)}" y="{_c(frame.top)}" width="{_c(frame.width)}" '
        f'height="{_c(frame.height)}" fill="{{background}}" stroke="#888888" stroke-width="1"/>'
    ]
    for value, label in y_labels:
        y = _c(frame.y(value))
        parts.append(
            f'<line x1="{_c(frame.left)}" y1="{y}" x2="{_c(frame.right)}" y2="{y}" '
            f'stroke="{GRID_COLOUR}" stroke-width="0.8"/>'
        )
        parts.append(
            f'<text x="{_c(frame.left - 6)}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle" font-size="11">{_e(label)}</text>'
        )
    for at, label in time_ticks(frame.start, frame.end):
        x = _c(frame.x(at))
        parts.append(
            f'<line x1="{x}" y1="{_c(frame.top)}" x2="{x}" y2="{_c(frame.bottom)}" '
            f'stroke="{GRID_COLOUR}" stroke-width="0.6" stroke-dasharray="2 3"/>'
        )
        parts.append(
            f'<text x="{x}" y="{_c(frame.bottom + 15)}" text-anchor="middle" '
            f'font-size="11">{_e(label)}</text>'
        )
    day = frame.start.astimezone(UTC).strftime("%Y-%m-%d")
    parts.append(
        f'<text x="{_c(frame.right)}" y="{_c(frame.bottom + 30)}" text-anchor="end" '
        f'font-size="11">time (UTC), from {_e(day)}</text>'
    )
    parts.append(
        f'<text x="14" y="{_c(frame.top + frame.height / 2)}" font-size="11" '
        f'text-anchor="middle" transform="rotate(-90 14 {_c(frame.top + frame.height / 2)})">'
        f"{_e(y_title)}</text>"
    )
    return parts


# --------------------------------------------------------------------------------------------
# markers (shapes that read without colour)
# --------------------------------------------------------------------------------------------


def _shape(kind: str, x: float, y: float, colour: str, size: float = 4.5) -> str:
    if kind == "circle":
        return f'<circle cx="{_c(x)}" cy="{_c(y)}" r="{_c(size)}" fill="{colour}"/>'
    if kind == "square":
        return (
            f'<rect x="{_c(x - size)}" y="{_c(y - size)}" width="{_c(2 * size)}" '
            f'height="{_c(2 * size)}" fill="{colour}"/>'
        )
    if kind == "diamond":
        return (
            f'<path d="M{_c(x)} {_c(y - size * 1.3)} L{_c(x + size * 1.3)} {_c(y)} '
            f'L{_c(x)} {_c(y + size * 1.3)} L{_c(x - size * 1.3)} {_c(y)} Z" fill="{colour}"/>'
        )
    if kind == "triangle":
        return (
            f'<path d="M{_c(x)} {_c(y - size * 1.2)} L{_c(x + size * 1.2)} {_c(y + size)} '
            f'L{_c(x - size * 1.2)} {_c(y + size)} Z" fill="{colour}"/>'
        )
    if kind == "down":  # an intent that was written (and seen)
        return (
            f'<path d="M{_c(x - size * 1.2)} {_c(y - size * 1.6)} '
            f'L{_c(x + size * 1.2)} {_c(y - size * 1.6)} L{_c(x)} {_c(y)} Z" '
            f'fill="{colour}" stroke="{colour}" stroke-width="1"/>'
        )
    if kind == "down-hollow":  # written, never seen in the status
        return (
            f'<path d="M{_c(x - size * 1.2)} {_c(y - size * 1.6)} '
            f'L{_c(x + size * 1.2)} {_c(y - size * 1.6)} L{_c(x)} {_c(y)} Z" '
            f'fill="#FFFFFF" stroke="{colour}" stroke-width="1.5"/>'
        )
    if kind in ("up", "up-hollow"):  # the same, pointing up at the level from below
        fill = colour if kind == "up" else "#FFFFFF"
        return (
            f'<path d="M{_c(x - size * 1.2)} {_c(y + size * 1.6)} '
            f'L{_c(x + size * 1.2)} {_c(y + size * 1.6)} L{_c(x)} {_c(y)} Z" '
            f'fill="{fill}" stroke="{colour}" stroke-width="1.5"/>'
        )
    if kind == "cross":
        s = size
        return (
            f'<path d="M{_c(x - s)} {_c(y - s)} L{_c(x + s)} {_c(y + s)} M{_c(x - s)} '
            f'{_c(y + s)} L{_c(x + s)} {_c(y - s)}" stroke="{colour}" stroke-width="2.2"/>'
        )
    if kind == "ring":
        return (
            f'<circle cx="{_c(x)}" cy="{_c(y)}" r="{_c(size)}" fill="#FFFFFF" '
            f'stroke="{colour}" stroke-width="1.5"/>'
        )
    if kind == "box":
        return (
            f'<rect x="{_c(x - size)}" y="{_c(y - size)}" width="{_c(2 * size)}" '
            f'height="{_c(2 * size)}" fill="#FFFFFF" stroke="{colour}" stroke-width="1.5"/>'
        )
    raise ValueError(f"unknown marker shape {kind!r}")


@dataclass(frozen=True)
class _Series:
    label: str
    colour: str
    dash: str | None
    shape: str
    width: float = 2.5


def _legend(items: Sequence[tuple[_Series | None, str, str, str]], y: float) -> list[str]:
    """A legend row: each item is a series (a line with its marker) or a lone marker
    (``shape``, ``colour``), then its label."""
    parts: list[str] = []
    x = float(_LEFT)
    for series, shape, colour, label in items:
        text = _short(label, 48)
        if series is not None:
            dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
            parts.append(
                f'<line x1="{_c(x)}" y1="{_c(y)}" x2="{_c(x + 34)}" y2="{_c(y)}" '
                f'stroke="{series.colour}" stroke-width="{series.width}"{dash}/>'
            )
            parts.append(_shape(series.shape, x + 17, y, series.colour, 4))
            x += 40
        else:
            parts.append(_shape(shape, x + 8, y + (4 if shape.startswith("down") else 0),
                                colour, 4.5))  # fmt: skip
            x += 20
        parts.append(
            f'<text x="{_c(x)}" y="{_c(y)}" dominant-baseline="middle" font-size="11">'
            f"<title>{_e(label)}</title>{_e(text)}</text>"
        )
        x += 6.4 * len(text) + 20
    return parts


def _legend_rows(
    items: Sequence[tuple[_Series | None, str, str, str]], y: float
) -> tuple[list[str], float]:
    """The legend laid out in rows that fit the width; returns the parts and the next y."""
    rows: list[list[tuple[_Series | None, str, str, str]]] = [[]]
    used = 0.0
    for item in items:
        need = (40 if item[0] is not None else 20) + 6.4 * len(_short(item[3], 48)) + 20
        if rows[-1] and used + need > _WIDTH - _LEFT - _RIGHT:
            rows.append([])
            used = 0.0
        rows[-1].append(item)
        used += need
    parts: list[str] = []
    for row in rows:
        parts += _legend(row, y)
        y += 20
    return parts, y


def _svg(kind: str, height: float, label: str, parts: Sequence[str], background: str) -> str:
    body = "\n".join(parts).replace("{background}", background)
    return (
        f'<svg class="plot plot-{kind}" viewBox="0 0 {_WIDTH} {_c(height)}" '
        f'width="100%" preserveAspectRatio="xMidYMin meet" role="img" '
        f'aria-label="{_e(label)}" font-family="DejaVu Sans, Arial, sans-serif">\n'
        f"<title>{_e(label)}</title>\n{body}\n</svg>"
    )


# --------------------------------------------------------------------------------------------
# the traffic plot
# --------------------------------------------------------------------------------------------

_MARKED: Final = {
    "approval.requested": ("approval", "approval requested"),
    "approval.verified": ("approval", "approved"),
    "approval.rejected": ("approval", "approval rejected"),
    "approval.expired": ("approval", "approval expired"),
    "rollout.promoting": ("promotion", "promotion decided"),
    "promoted": ("promotion", "promoted"),
    "rollout.rolling_back": ("rollback", "rollback decided"),
    "rolled_back": ("rollback", "rolled back"),
    "rollout.paused": ("pause", "paused"),
    "rollout.failed": ("end", "failed"),
    "rollout.superseded": ("end", "superseded"),
    "rollout.opted_out": ("end", "opted out"),
    "shadow.started": ("shadow", "shadow comparison started"),
    "shadow.passed": ("shadow", "shadow comparison passed"),
    "shadow.reported": ("shadow", "shadow comparison reported"),
    "shadow.rejected": ("shadow", "challenger rejected"),
}
_MARK_STYLE: Final = {
    "approval": ("#7B3294", "2 3"),
    "promotion": (PASSED_COLOUR, None),
    "rollback": (FAILED_COLOUR, "7 4"),
    "pause": ("#555555", "1 3"),
    "end": ("#555555", "9 3 2 3"),
    "shadow": ("#555555", "4 2"),
    "manual": ("#000000", "6 2 1 2"),
}


_REFUSED: Final = frozenset({"manual.rejected", "manual.denied"})


@dataclass(frozen=True)
class Marker:
    """An event marked on the traffic plot with its number (the report's key lists them)."""

    number: int
    at: datetime
    seq: int
    kind: str
    label: str
    reason: str | None


def markers_of(dossier: Dossier) -> tuple[list[Marker], int]:
    """The events worth a mark on the traffic plot (approvals, promotion, rollback, pauses,
    people's commands, the end), numbered in order; and how many were left out."""
    found: list[LoggedRecord] = []
    for record in dossier.log:
        person = record.action.startswith("manual.") and record.action not in _REFUSED
        if record.action in _MARKED or person:
            found.append(record)
    kept = found[:MAX_MARKERS]
    markers = []
    for number, record in enumerate(kept, start=1):
        kind, label = _MARKED.get(
            record.action,
            ("manual", f"{record.action.removeprefix('manual.')} by {record.actor.id}"),
        )
        markers.append(Marker(number, record.at, record.seq, kind, label, record.reason))
    return markers, len(found) - len(kept)


def _role_styles(dossier: Dossier, revisions: Sequence[str]) -> dict[str, _Series]:
    summary = dossier.summary
    stable = summary.stable.revision if summary.stable else None
    canary = summary.canary.revision if summary.canary else None
    styles: dict[str, _Series] = {}
    others = iter(
        [
            (OTHER_COLOURS[i % len(OTHER_COLOURS)], dash, shape)
            for i, (dash, shape) in enumerate(
                [
                    ("2 3", "triangle"),
                    ("8 3 2 3", "diamond"),
                    ("1 2", "triangle"),
                    ("4 4", "diamond"),
                ]
                * 4
            )
        ]
    )
    for revision in revisions:
        if revision == stable:
            styles[revision] = _Series(f"stable {revision}", STABLE_COLOUR, None, "circle")
        elif revision == canary:
            styles[revision] = _Series(f"canary {revision}", CANARY_COLOUR, "9 4", "square")
        else:
            colour, dash, shape = next(others, ("#999999", "1 2", "triangle"))
            styles[revision] = _Series(f"revision {revision}", colour, dash, shape, 2.0)
    return styles


def _plot_end(dossier: Dossier) -> datetime:
    summary = dossier.summary
    if summary.in_progress or summary.ended_at is None:
        return dossier.as_of
    return summary.ended_at


def traffic_plot(dossier: Dossier, markers: Sequence[Marker]) -> str:
    """The share of live traffic each revision served over time (stepped lines), the
    intents (what was asked, and what became of it) and the numbered events."""
    summary = dossier.summary
    points = sorted(dossier.traffic, key=lambda p: (p.at, p.seq))
    times = [p.at for p in points] + [i.at for i in dossier.intents] + [m.at for m in markers]
    if summary.started_at is not None:
        times.append(summary.started_at)
    end = _plot_end(dossier)
    times.append(end)
    start, stop = _time_range(times)
    revisions: list[str] = []
    for revision in (
        summary.stable.revision if summary.stable else None,
        summary.canary.revision if summary.canary else None,
    ):
        if revision and any(p.share(revision) is not None for p in points):
            revisions.append(revision)
    for point in points:
        for share in point.shares:
            if share.revision not in revisions:
                revisions.append(share.revision)
    styles = _role_styles(dossier, revisions)
    frame = _Frame(top=58, height=230, start=start, end=stop, low=0, high=100)
    parts = _axes(frame, [(v, f"{v:g} %") for v in (0, 25, 50, 75, 100)], "share of traffic")
    parts += _marker_lines(frame, markers)
    last_time = max([end, *(p.at for p in points)]) if points else end
    for revision in revisions:
        parts += _step_series(frame, points, revision, styles[revision], last_time)
    parts += _intent_marks(frame, dossier)
    if not points:
        parts.append(
            f'<text x="{_c(frame.left + frame.width / 2)}" y="{_c(frame.top + frame.height / 2)}" '
            f'text-anchor="middle" font-size="13">no traffic split was recorded for this '
            f"rollout</text>"
        )
    legend: list[tuple[_Series | None, str, str, str]] = [
        (styles[r], "", "", styles[r].label) for r in revisions
    ]
    outcomes = {i.outcome for i in dossier.intents}
    written = [i for i in dossier.intents if i.outcome == "applied"]
    if any(i.seen_at is not None for i in written):
        legend.append((None, "down", LIMIT_COLOUR, "intent written and seen in status"))
    if any(i.seen_at is None for i in written):
        legend.append((None, "down-hollow", LIMIT_COLOUR, "intent written, never seen"))
    if outcomes & {"failed", "abandoned"}:
        legend.append((None, "cross", FAILED_COLOUR, "intent failed or abandoned"))
    if "unconfirmed" in outcomes:
        legend.append((None, "ring", LIMIT_COLOUR, "intent with no outcome recorded"))
    rows, height = _legend_rows(legend, frame.bottom + 52)
    parts += rows
    title = (
        f"Share of live traffic over time for {summary.namespace}/{summary.name}"
        if summary.name
        else "Share of live traffic over time"
    )
    return _svg("traffic", height, title, parts, TRAFFIC_BACKGROUND)


def _step_series(
    frame: _Frame, points: Sequence[TrafficPoint], revision: str, style: _Series, last: datetime
) -> list[str]:
    values: list[tuple[datetime, int]] = []
    for point in points:
        share = point.share(revision)
        if share is not None:
            values.append((point.at, share))
    if not values:
        return []
    path = [f"M{_c(frame.x(values[0][0]))} {_c(frame.y(values[0][1]))}"]
    for at, share in values[1:]:
        path.append(f"H{_c(frame.x(at))} V{_c(frame.y(share))}")
    path.append(f"H{_c(frame.x(max(last, values[-1][0])))}")
    dash = f' stroke-dasharray="{style.dash}"' if style.dash else ""
    parts = [
        f'<path d="{" ".join(path)}" fill="none" stroke="{style.colour}" '
        f'stroke-width="{style.width}"{dash} stroke-linejoin="round">'
        f"<title>{_e(style.label)}</title></path>"
    ]
    previous: int | None = None
    for at, share in values:
        if share != previous:
            parts.append(_shape(style.shape, frame.x(at), frame.y(share), style.colour))
        previous = share
    return parts


def _intent_marks(frame: _Frame, dossier: Dossier) -> list[str]:
    """A mark just above the share each intent asked for (below it near 100 %, so the
    event numbers above the plot stay readable)."""
    parts: list[str] = []
    for intent in dossier.intents:
        if intent.percent is None:
            continue
        x, level = frame.x(intent.at), frame.y(intent.percent)
        below = level - 16 < frame.top
        what = f"intent #{intent.seq}: {intent.revision or 'new model'} to {intent.percent} %"
        if intent.outcome == "applied":
            shape = "down" if intent.seen_at is not None else "down-hollow"
            if below:
                shape = shape.replace("down", "up")
            y, colour, note = (level + 7 if below else level - 7), LIMIT_COLOUR, "written"
        elif intent.outcome in ("failed", "abandoned"):
            shape, colour, note = "cross", FAILED_COLOUR, intent.outcome
            y = level + 9 if below else level - 9
        else:
            shape, colour, note = "ring", LIMIT_COLOUR, "no outcome recorded"
            y = level + 9 if below else level - 9
        parts.append(f"<g><title>{_e(what)}: {_e(note)}</title>{_shape(shape, x, y, colour)}</g>")
    return parts


def _marker_lines(frame: _Frame, markers: Sequence[Marker]) -> list[str]:
    parts: list[str] = []
    rows: list[float] = []  # the x of the last label in each row of labels
    for marker in markers:
        colour, dash = _MARK_STYLE.get(marker.kind, ("#555555", None))
        x = frame.x(marker.at)
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{_c(x)}" y1="{_c(frame.top)}" x2="{_c(x)}" y2="{_c(frame.bottom)}" '
            f'stroke="{colour}" stroke-width="1.4"{dashes}/>'
        )
        row = next((i for i, last in enumerate(rows) if x - last >= 20), None)
        if row is None:
            row = len(rows) % 3 if len(rows) >= 3 else len(rows)
            if row == len(rows):
                rows.append(x)
        rows[row] = x
        cy = frame.top - 11 - 15 * (row % 3)
        parts.append(
            f"<g><title>{_e(marker.number)}: {_e(marker.label)}</title>"
            f'<circle cx="{_c(x)}" cy="{_c(cy)}" r="6.5" fill="#FFFFFF" stroke="{colour}" '
            f'stroke-width="1.4"/><text x="{_c(x)}" y="{_c(cy)}" text-anchor="middle" '
            f'dominant-baseline="central" font-size="8.5">{marker.number}</text></g>'
        )
    return parts


# --------------------------------------------------------------------------------------------
# one check's plot
# --------------------------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def downsample(evaluations: Sequence[Evaluation], limit: int = MAX_PLOTTED) -> list[Evaluation]:
    """At most ``limit`` evaluations to draw: the first and the last, every one that did
    not pass (up to a third of the limit), and in each slice of the rest the lowest and the
    highest canary value, so spikes stay visible."""
    if len(evaluations) <= limit:
        return list(evaluations)
    keep = {0, len(evaluations) - 1}
    notable = [i for i, e in enumerate(evaluations) if e.verdict != "Successful"]
    keep.update(notable[: limit // 3])
    slices = max((limit - len(keep)) // 2, 1)
    size = len(evaluations) / slices
    for number in range(slices):
        lo, hi = int(number * size), min(int((number + 1) * size), len(evaluations))
        window = [i for i in range(lo, hi) if _finite(evaluations[i].canary_value)]
        if window:
            keep.add(min(window, key=lambda i: evaluations[i].canary_value or 0.0))
            keep.add(max(window, key=lambda i: evaluations[i].canary_value or 0.0))
    return [evaluations[i] for i in sorted(keep)][: max(limit, 2) + 2]


def _value_range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return low - pad, high + pad


_VERDICT_SHAPES: Final = {
    "Successful": ("circle", PASSED_COLOUR),
    "Failed": ("cross", FAILED_COLOUR),
    "Inconclusive": ("ring", "#555555"),
    "Error": ("box", "#555555"),
}


def _verdict_strip(frame: _Frame, plotted: Sequence[Evaluation], y: float) -> list[str]:
    parts = [
        f'<text x="{_c(frame.left - 6)}" y="{_c(y)}" text-anchor="end" '
        f'dominant-baseline="middle" font-size="10">verdict</text>'
    ]
    for evaluation in plotted:
        shape, colour = _VERDICT_SHAPES.get(evaluation.verdict, ("box", "#555555"))
        parts.append(
            f"<g><title>{_e(evaluation.verdict)} at "
            f"{_e(evaluation.at.strftime('%H:%M:%S'))}</title>"
            f"{_shape(shape, frame.x(evaluation.at), y, colour, 3.5)}</g>"
        )
    return parts


def _line(
    frame: _Frame,
    points: Sequence[tuple[datetime, float]],
    style: _Series,
    stepped: bool = False,
    markers: bool = True,
) -> list[str]:
    if not points:
        return []
    path = [f"M{_c(frame.x(points[0][0]))} {_c(frame.y(points[0][1]))}"]
    for at, value in points[1:]:
        if stepped:
            path.append(f"H{_c(frame.x(at))} V{_c(frame.y(value))}")
        else:
            path.append(f"L{_c(frame.x(at))} {_c(frame.y(value))}")
    dash = f' stroke-dasharray="{style.dash}"' if style.dash else ""
    parts = []
    if len(points) > 1:
        parts.append(
            f'<path d="{" ".join(path)}" fill="none" stroke="{style.colour}" '
            f'stroke-width="{style.width}"{dash} stroke-linejoin="round">'
            f"<title>{_e(style.label)}</title></path>"
        )
    if markers or len(points) == 1:
        parts += [
            _shape(style.shape, frame.x(at), frame.y(v), style.colour, 3.8) for at, v in points
        ]
    return parts


def metric_plot(check: CheckHistory, label: str) -> str | None:
    """The canary's and the baseline's values over the evaluations, with the threshold in
    the values' units where it can be shown (:func:`canary.evidence.dossier.value_limit`),
    and each evaluation's verdict. None when no value is finite (nothing to draw)."""
    plotted = downsample(check.evaluations)
    canary = [(e.at, e.canary_value) for e in plotted if _finite(e.canary_value)]
    baseline = [(e.at, e.baseline_value) for e in plotted if _finite(e.baseline_value)]
    limit = [(e.at, e.limit) for e in plotted if _finite(e.limit)]
    if not canary and not baseline:
        return None
    numbers = [v for _, v in canary + baseline + limit if v is not None]
    low, high = _value_range(numbers)
    start, stop = _time_range([e.at for e in plotted])
    frame = _Frame(top=34, height=170, start=start, end=stop, low=low, high=high)
    ticks = [(v, format_number(v)) for v in value_ticks(low, high)]
    parts = _axes(frame, ticks, "value")
    canary_style = _Series("canary", CANARY_COLOUR, None, "square")
    baseline_style = _Series("baseline", BASELINE_COLOUR, "7 4", "circle")
    limit_style = _Series("threshold", LIMIT_COLOUR, "2 3", "diamond", 1.6)
    few = len(plotted) <= 40  # markers on every point only while they stay apart
    parts += _line(frame, [(a, v) for a, v in limit if v is not None], limit_style, True, False)
    # the baseline's dashes drawn last: where the two values are equal, both lines show
    parts += _line(frame, [(a, v) for a, v in canary if v is not None], canary_style, False, few)
    parts += _line(
        frame, [(a, v) for a, v in baseline if v is not None], baseline_style, False, few
    )
    for e in plotted:
        if e.verdict == "Failed" and e.canary_value is not None and _finite(e.canary_value):
            parts.append(
                f'<circle cx="{_c(frame.x(e.at))}" cy="{_c(frame.y(e.canary_value))}" r="8" '
                f'fill="none" stroke="{FAILED_COLOUR}" stroke-width="1.8"/>'
            )
    parts += _verdict_strip(frame, plotted, frame.top - 16)
    legend: list[tuple[_Series | None, str, str, str]] = [
        (canary_style, "", "", "canary"),
        (baseline_style, "", "", "baseline"),
    ]
    if limit:
        legend.append((limit_style, "", "", "threshold (in the values' units)"))
    present = {e.verdict for e in plotted}
    for verdict, (shape, colour) in _VERDICT_SHAPES.items():
        if verdict in present:
            legend.append((None, shape, colour, f"verdict {verdict}"))
    if "Failed" in present:
        legend.append((None, "ring", FAILED_COLOUR, "failed evaluation (ringed)"))
    strip_y = frame.bottom + 30
    rows, height = _legend_rows(legend, strip_y + 22)
    parts += rows
    return _svg("metric", height, label, parts, METRIC_BACKGROUND)


def statistic_plot(check: CheckHistory, label: str) -> str | None:
    """The judged statistic against its threshold over the evaluations, for a check whose
    threshold is not in the values' units (a sequential test, a shadow comparison). None
    when there is nothing finite to draw, or when the values' plot already shows the
    threshold."""
    plotted = downsample(check.evaluations)
    if any(_finite(e.limit) for e in plotted):
        return None
    statistic = [(e.at, e.statistic) for e in plotted if _finite(e.statistic)]
    threshold = [(e.at, e.threshold) for e in plotted if _finite(e.threshold)]
    if not statistic or not threshold:
        return None
    numbers = [v for _, v in statistic + threshold if v is not None]
    low, high = _value_range(numbers)
    start, stop = _time_range([e.at for e in plotted])
    frame = _Frame(top=16, height=130, start=start, end=stop, low=low, high=high)
    parts = _axes(frame, [(v, format_number(v)) for v in value_ticks(low, high)], "statistic")
    stat_style = _Series("statistic", STATISTIC_COLOUR, None, "diamond")
    limit_style = _Series("threshold", LIMIT_COLOUR, "2 3", "diamond", 1.6)
    parts += _line(frame, [(a, v) for a, v in threshold if v is not None], limit_style, True, False)
    parts += _line(
        frame,
        [(a, v) for a, v in statistic if v is not None],
        stat_style,
        False,
        len(plotted) <= 40,
    )
    rows, height = _legend_rows(
        [(stat_style, "", "", "statistic judged"), (limit_style, "", "", "its threshold")],
        frame.bottom + 44,
    )
    parts += rows
    return _svg("statistic", height, label, parts, METRIC_BACKGROUND)
