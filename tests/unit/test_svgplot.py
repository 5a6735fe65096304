"""The service page's plot, drawn alone: numbers land where they should, odd histories (none, one
point, gaps, a huge timeout, NaN) still give a valid picture, and no text escapes as markup."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from opsroom.web import svgplot
from opsroom.web.svgplot import Series, choose_scale, render

NS = "{http://www.w3.org/2000/svg}"
END = 1_700_000_000.0
START = END - 86400


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # our own output, parsed to prove it is well-formed


def _polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in pl.get("points", "").split()]  # type: ignore[misc]
            for pl in root.iter(NS + "polyline")]


def _band(root: ET.Element) -> list[tuple[float, float, str]]:
    fills = {v: k for k, v in svgplot.STATE_COLOURS.items()}
    return [(float(r.get("x", 0)), float(r.get("width", 0)), fills[r.get("fill", "")])
            for r in root.iter(NS + "rect") if r.get("fill") in fills]


def test_points_map_onto_the_plot_area_linearly() -> None:
    pts = [(START + i * 3600, float(10 * i), "OK") for i in range(25)]  # 0..240 ms, one an hour
    root = _parse(render([Series("web-http", pts)], start=START, end=END, title="t"))
    (line,) = _polylines(root)
    assert len(line) == 25
    assert line[0] == (svgplot.LEFT, svgplot.PLOT_BOTTOM)  # 0 ms at the window's start: bottom left
    assert line[-1][0] == svgplot.W - svgplot.RIGHT
    # Linear from 0 to the nice maximum 500 ms: 240 ms is 48% of the height.
    assert line[-1][1] == pytest.approx(svgplot.PLOT_BOTTOM - 0.48 * (svgplot.PLOT_BOTTOM - svgplot.TOP), abs=0.1)
    xs = [p[0] for p in line]
    assert xs == sorted(xs)
    labels = [t.text for t in root.iter(NS + "text")]
    assert "500 ms" in labels and "0 ms" in labels and "-24h" in labels and "now" in labels
    assert root.get("viewBox") == "0 0 400 200" and root.get("width") == "100%" and root.get("role") == "img"


def test_state_band_colours_each_stretch_with_its_worst_state() -> None:
    half = START + 43200
    ok = [(START + i * 600, 5.0, "OK") for i in range(145)]
    crit = [(half + i * 600, 9.0, "CRITICAL") for i in range(12)]  # two hours of CRITICAL from noon
    root = _parse(render([Series("a", ok, gap_s=1200), Series("b", crit, gap_s=1200)], start=START, end=END,
                         title="t"))
    band = _band(root)
    states = [s for _, _, s in band]
    assert states == ["OK", "CRITICAL", "OK"], band
    _, width, _ = band[1]
    # From noon to the last CRITICAL result plus its gap allowance: 2 h 10 min, to a bin's width.
    assert width == pytest.approx((svgplot.W - svgplot.LEFT - svgplot.RIGHT) * 7800 / 86400, abs=2)
    assert band[0][0] == svgplot.LEFT


def test_an_empty_history_still_draws_axes_and_says_so() -> None:
    root = _parse(render([Series("idle", [])], start=START, end=END, title="nothing yet"))
    assert not _polylines(root) and not _band(root)
    assert any(t.text == "no latency in this window" for t in root.iter(NS + "text"))
    assert "idle: no results" in (root.find(NS + "desc").text or "")  # type: ignore[union-attr]
    root = _parse(render([], start=START, end=END, title="no checks"))
    assert root.find(NS + "desc").text == "no checks"  # type: ignore[union-attr]


def test_one_point_is_a_dot_not_an_invisible_line() -> None:
    root = _parse(render([Series("once", [(END - 60, 42.0, "WARNING")])], start=START, end=END, title="t"))
    assert not _polylines(root)
    (dot,) = root.iter(NS + "circle")
    assert float(dot.get("cx", 0)) > svgplot.W - svgplot.RIGHT - 2
    assert [s for _, _, s in _band(root)] == ["WARNING"]


def test_a_gap_longer_than_the_checks_interval_breaks_the_line_and_the_band() -> None:
    early = [(START + i * 60, 5.0, "OK") for i in range(60)]  # the first hour
    late = [(END - 3600 + i * 60, 5.0, "OK") for i in range(61)]  # the last hour
    root = _parse(render([Series("gappy", early + late, gap_s=180)], start=START, end=END, title="t"))
    lines = _polylines(root)
    assert [len(line) for line in lines] == [60, 61]
    band = _band(root)
    assert len(band) == 2  # nothing drawn for the 22 h nobody checked
    assert band[1][0] - (band[0][0] + band[0][1]) > 200


def test_huge_latencies_switch_to_a_log_scale() -> None:
    typical = [(START + i * 600, 5.0 + i % 3, "OK") for i in range(140)]
    timeout = [(END - 300, 30_000.0, "CRITICAL")]
    scale = choose_scale([lat for _, lat, _ in typical + timeout])
    assert scale is not None and scale.log and scale.lo == 1 and scale.hi == 100_000
    root = _parse(render([Series("slow", typical + timeout)], start=START, end=END, title="t"))
    labels = [t.text for t in root.iter(NS + "text")]
    assert "log scale" in labels and "1 ms" in labels and "10 s" in labels
    (line,) = _polylines(root)
    ys = [y for _, y in line]
    # The 5-7 ms points sit well above the axis, not squashed onto it as a linear scale would.
    assert max(ys[:-1]) < svgplot.PLOT_BOTTOM - 0.1 * (svgplot.PLOT_BOTTOM - svgplot.TOP)
    assert min(ys) == pytest.approx(svgplot.TOP + (svgplot.PLOT_BOTTOM - svgplot.TOP) * (1 - math.log10(30_000) / 5),
                                    abs=0.1)
    steady = choose_scale([5.0, 6.0, 7.0, 80.0])
    assert steady is not None and not steady.log and steady.hi == 100


def test_nan_infinite_and_negative_values_are_left_out_not_drawn() -> None:
    pts = [(START + 10, 5.0, "OK"), (START + 20, math.nan, "OK"), (START + 30, math.inf, "BOGUS"),
           (START + 40, -3.0, "OK"), (math.nan, 5.0, "OK"), (START + 50, 6.0, "OK"), (END + 999, 1.0, "OK")]
    svg = render([Series("odd", pts)], start=START, end=END, title="t")
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    root = _parse(svg)
    # The NaN latency breaks the run: two dots, no line through a value that does not exist.
    assert not _polylines(root) and len(list(root.iter(NS + "circle"))) == 2
    assert "UNKNOWN" in [s for _, _, s in _band(root)]  # a state the plot does not know is UNKNOWN
    with pytest.raises(ValueError, match="finite times"):
        render([], start=math.nan, end=END, title="t")
    with pytest.raises(ValueError, match="start before end"):
        render([], start=END, end=START, title="t")


def test_every_name_is_text_in_the_svg_never_markup() -> None:
    evil = '</svg><script>alert(1)</script><svg onload="x">'
    svg = render([Series(evil, [(END - 100, 5.0, "OK"), (END - 50, 6.0, "OK")])], start=START, end=END,
                 title=evil, desc=evil, id_prefix='x" onload="alert(1)')
    assert "<script" not in svg and "onload=" not in svg.replace("onload=&quot;", "")
    root = _parse(svg)
    assert root.find(NS + "title").text == evil  # type: ignore[union-attr]
    assert root.get("aria-labelledby") == "plot-t plot-d"  # a bad id prefix falls back
    assert [e.tag for e in root.iter() if "script" in e.tag.lower()] == []
    assert re.search(r"<title>[^<]*&lt;/svg&gt;", svg)
