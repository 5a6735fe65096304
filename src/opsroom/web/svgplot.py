"""A service's latency and state over time as one inline SVG, drawn on the server.

No JavaScript and no inline style (the CSP forbids both): colours and sizes are presentation
attributes, the picture scales through its viewBox. Every name and label is escaped here, since
the result is put on the page as markup; numbers are formatted from finite floats only.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

W, H = 400.0, 200.0
LEFT, RIGHT, TOP = 46.0, 8.0, 8.0
PLOT_BOTTOM = 150.0
BAND_TOP, BAND_H = 156.0, 9.0
LABEL_Y = 180.0
BAND_BINS = 200
# Log scale once the slowest result is this many times the median: one 10 s timeout among 5 ms
# answers would otherwise flatten every other point onto the axis.
LOG_RATIO = 20.0
SERIES_COLOURS = ("#1f5fbf", "#7b3fa0", "#0b7f86", "#b35c00", "#5a6b00", "#a0306e")
STATE_COLOURS = {"OK": "#2e9e5b", "WARNING": "#e0a100", "CRITICAL": "#c62828", "UNKNOWN": "#9e9e9e"}
STATE_RANK = {"OK": 0, "UNKNOWN": 1, "WARNING": 2, "CRITICAL": 3}
_RANK_STATE = {v: k for k, v in STATE_RANK.items()}
_SAFE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,40}$")


@dataclass(frozen=True, slots=True)
class Series:
    """One check: (time, latency in ms or None, state) points; a gap longer than gap_s breaks the line."""

    name: str
    points: Sequence[tuple[float, float | None, str]]
    gap_s: float = math.inf


def colour(index: int) -> str:
    """The line colour of the index-th series, so a legend outside the SVG can match it."""
    return SERIES_COLOURS[index % len(SERIES_COLOURS)]


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _n(x: float) -> str:
    return f"{x:.1f}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def fmt_ms(v: float) -> str:
    """A latency as people read it: `850 ms`, `1.5 s`."""
    if v >= 1000:
        return f"{v / 1000:.3g} s"
    return f"{v:.3g} ms"


def _ago(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    if seconds >= 7200 or seconds % 3600 == 0:
        return f"-{seconds / 3600:g}h"
    return f"-{round(seconds / 60)}m"


@dataclass(frozen=True, slots=True)
class Scale:
    """Latency (ms) to a y coordinate; log10 when the values span too much for a line."""

    lo: float
    hi: float
    log: bool

    def y(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            frac = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            frac = (v - self.lo) / (self.hi - self.lo)
        frac = min(1.0, max(0.0, frac))
        return PLOT_BOTTOM - frac * (PLOT_BOTTOM - TOP)

    def ticks(self) -> list[float]:
        if not self.log:
            return [self.lo, (self.lo + self.hi) / 2, self.hi]
        decades = list(range(round(math.log10(self.lo)), round(math.log10(self.hi)) + 1))
        step = max(1, math.ceil(len(decades) / 5))
        return [10.0 ** d for d in decades[::step]]


def _nice(v: float) -> float:
    """The smallest 1, 2 or 5 times 10^k at or above v."""
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * 10.0 ** exp >= v:
            return m * 10.0 ** exp
    return 10.0 ** (exp + 1)


def choose_scale(latencies: Sequence[float]) -> Scale | None:
    """Linear from 0, or log10 over whole decades when the maximum is LOG_RATIO times the median."""
    values = sorted(v for v in latencies if _finite(v) and v >= 0)
    if not values:
        return None
    top = values[-1]
    positives = [v for v in values if v > 0]
    median = positives[len(positives) // 2] if positives else 0.0
    if len(positives) >= 2 and median > 0 and top / median >= LOG_RATIO:
        lo = 10.0 ** math.floor(math.log10(positives[0]))
        hi = 10.0 ** math.ceil(math.log10(top))
        return Scale(lo, hi if hi > lo else lo * 10, True)
    return Scale(0.0, _nice(top), False)


def _clean(series: Series, start: float, end: float) -> list[tuple[float, float | None, str]]:
    pts = [(t, lat if _finite(lat) and lat is not None and lat >= 0 else None,
            s if s in STATE_RANK else "UNKNOWN")
           for t, lat, s in series.points if _finite(t) and start <= t <= end]
    return sorted(pts, key=lambda p: p[0])


def _segments(pts: list[tuple[float, float | None, str]], gap_s: float) -> list[list[tuple[float, float]]]:
    """Runs of points with a latency and no gap longer than gap_s between them."""
    out: list[list[tuple[float, float]]] = []
    run: list[tuple[float, float]] = []
    prev: float | None = None
    for t, lat, _ in pts:
        if lat is None or (prev is not None and t - prev > gap_s):
            if run:
                out.append(run)
            run = []
        if lat is not None:
            run.append((t, lat))
        prev = t
    if run:
        out.append(run)
    return out


def _band(cleaned: list[tuple[list[tuple[float, float | None, str]], float]], start: float,
          end: float) -> list[tuple[int, int, str]]:
    """(first bin, last bin, state) runs: each result colours its time until the next (or the gap)."""
    bins: list[int] = [-1] * BAND_BINS
    width = (end - start) / BAND_BINS
    for pts, gap_s in cleaned:
        for i, (t, _, state) in enumerate(pts):
            until = pts[i + 1][0] if i + 1 < len(pts) else end
            until = min(until, t + gap_s, end)
            first = min(BAND_BINS - 1, int((t - start) / width))
            last = max(first, min(BAND_BINS - 1, math.ceil((until - start) / width) - 1))
            rank = STATE_RANK[state]
            for b in range(first, last + 1):
                bins[b] = max(bins[b], rank)
    runs: list[tuple[int, int, str]] = []
    for b, rank in enumerate(bins):
        if rank < 0:
            continue
        state = _RANK_STATE[rank]
        if runs and runs[-1][1] == b - 1 and runs[-1][2] == state:
            runs[-1] = (runs[-1][0], b, state)
        else:
            runs.append((b, b, state))
    return runs


def render(series: Sequence[Series], *, start: float, end: float, title: str, desc: str = "",
           id_prefix: str = "plot") -> str:
    """The SVG markup: latency lines per series over a state band, with a few axis labels."""
    if not (_finite(start) and _finite(end) and end > start):
        raise ValueError(f"the plot's window must be two finite times, start before end (got {start!r}, {end!r})")
    pid = id_prefix if _SAFE_ID.match(id_prefix) else "plot"
    right = W - RIGHT

    def x(t: float) -> float:
        return LEFT + (t - start) / (end - start) * (right - LEFT)

    cleaned = [(_clean(s, start, end), s.gap_s if _finite(s.gap_s) and s.gap_s > 0 else math.inf) for s in series]
    scale = choose_scale([lat for pts, _ in cleaned for _, lat, _ in pts if lat is not None])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W:g} {H:g}" width="100%" '
             f'preserveAspectRatio="xMidYMid meet" role="img" aria-labelledby="{pid}-t {pid}-d" '
             f'font-family="system-ui,sans-serif" font-size="12" class="plot">',
             f'<title id="{pid}-t">{_e(title)}</title>'
             f'<desc id="{pid}-d">{_e(desc or _describe(series, cleaned))}</desc>',
             f'<rect x="{LEFT:g}" y="{TOP:g}" width="{right - LEFT:g}" height="{PLOT_BOTTOM - TOP:g}" fill="#fafbfc" '
             f'stroke="#c8ccd2"/>']
    if scale is not None:
        for v in scale.ticks():
            y = scale.y(v)
            parts.append(f'<line x1="{LEFT:g}" x2="{right:g}" y1="{_n(y)}" y2="{_n(y)}" stroke="#e3e6ea"/>'
                         f'<text x="{LEFT - 4:g}" y="{_n(y + 4)}" text-anchor="end" fill="#556">{_e(fmt_ms(v))}</text>')
        if scale.log:
            parts.append(f'<text x="{LEFT + 4:g}" y="{TOP + 11:g}" fill="#556">log scale</text>')
    else:
        parts.append(f'<text x="{(LEFT + right) / 2:g}" y="{(TOP + PLOT_BOTTOM) / 2:g}" text-anchor="middle" '
                     f'fill="#556">no latency in this window</text>')
    bw = (right - LEFT) / BAND_BINS
    parts.append(f'<rect x="{LEFT:g}" y="{BAND_TOP:g}" width="{right - LEFT:g}" height="{BAND_H:g}" fill="#eef0f3"/>')
    for first, last, state in _band(cleaned, start, end):
        parts.append(f'<rect x="{_n(LEFT + first * bw)}" y="{BAND_TOP:g}" width="{_n((last - first + 1) * bw)}" '
                     f'height="{BAND_H:g}" fill="{STATE_COLOURS[state]}"><title>{state}</title></rect>')
    for i in range(5):
        t = start + (end - start) * i / 4
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        parts.append(f'<text x="{_n(x(t))}" y="{LABEL_Y:g}" text-anchor="{anchor}" fill="#556">'
                     f'{_e(_ago(round(end - t)))}</text>')
    if scale is not None:
        for i, (pts, gap_s) in enumerate(cleaned):
            name, c = _e(series[i].name), colour(i)
            for run in _segments(pts, gap_s):
                if len(run) == 1:
                    t, lat = run[0]
                    parts.append(f'<circle cx="{_n(x(t))}" cy="{_n(scale.y(lat))}" r="2.5" fill="{c}">'
                                 f'<title>{name}</title></circle>')
                else:
                    coords = " ".join(f"{_n(x(t))},{_n(scale.y(lat))}" for t, lat in run)
                    parts.append(f'<polyline points="{coords}" fill="none" stroke="{c}" stroke-width="1.5" '
                                 f'stroke-linejoin="round"><title>{name}</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)


def _describe(series: Sequence[Series], cleaned: list[tuple[list[tuple[float, float | None, str]], float]]) -> str:
    """What a screen reader says instead of the picture: per series, its range and worst state."""
    said = []
    for s, (pts, _) in zip(series, cleaned, strict=True):
        lats = [lat for _, lat, _ in pts if lat is not None]
        if not pts:
            said.append(f"{s.name}: no results")
            continue
        worst = _RANK_STATE[max(STATE_RANK[st] for _, _, st in pts)]
        span = f"latency {fmt_ms(min(lats))} to {fmt_ms(max(lats))}" if lats else "no latency"
        said.append(f"{s.name}: {len(pts)} points, {span}, worst state {worst}")
    return "; ".join(said) or "no checks"
