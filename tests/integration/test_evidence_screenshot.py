"""The evidence report as a browser shows and prints it: Debian's headless Chromium takes a
screenshot of a realistic report, and the plots must be on it (the traffic plot's and the
metric plots' series, found by their colours inside their plot areas); it also prints the
report to a PDF of several pages.

The PNG is read here with zlib alone (8-bit RGB or RGBA, not interlaced, the five filter
types), so the check needs no imaging library. Chromium is a Debian package that
``make test`` installs; without it this test fails, it never skips.
"""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from canary.evidence import render_html
from canary.evidence.plots import (
    BASELINE_COLOUR,
    CANARY_COLOUR,
    METRIC_BACKGROUND,
    STABLE_COLOUR,
    TRAFFIC_BACKGROUND,
)
from tests.unit.evidence_story import approved

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 4000
Colour = tuple[int, int, int]


def rgb(hex_colour: str) -> Colour:
    value = hex_colour.lstrip("#")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


# --------------------------------------------------------------------------------------------
# a small PNG reader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    rows: list[bytes]  # RGB, three bytes a pixel
    channels: int = 3

    def pixel(self, x: int, y: int) -> Colour:
        row = self.rows[y]
        return (row[3 * x], row[3 * x + 1], row[3 * x + 2])


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path: Path) -> Image:
    """An 8-bit RGB or RGBA PNG (alpha dropped), not interlaced."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    position, compressed = 8, b""
    width = height = channels = 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunk = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8, f"bit depth {depth}"
            assert colour_type in (2, 6), f"colour type {colour_type}"
            assert interlace == 0, "interlaced"
            channels = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            compressed += chunk
        elif kind == b"IEND":
            break
    raw = zlib.decompress(compressed)
    stride = width * channels
    previous = bytearray(stride)
    rows: list[bytes] = []
    offset = 0
    for _ in range(height):
        kind = raw[offset]
        line = bytearray(raw[offset + 1 : offset + 1 + stride])
        offset += 1 + stride
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, corner)) & 0xFF
            else:
                assert kind == 0, f"unknown PNG filter {kind}"
        previous = line
        if channels == 4:
            rows.append(bytes(b for i, b in enumerate(line) if i % 4 != 3))
        else:
            rows.append(bytes(line))
    return Image(width, height, rows)


def _near(a: Colour, b: Colour, tolerance: int = 3) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def count(image: Image, colour: Colour, rows: range) -> int:
    return sum(1 for y in rows for x in range(image.width) if _near(image.pixel(x, y), colour))


def bands(image: Image, colour: Colour, at_least: int = 300) -> list[range]:
    """The runs of rows in which at least ``at_least`` pixels have ``colour`` (a plot area's
    background), top to bottom; runs a few rows apart are one."""
    found: list[range] = []
    start: int | None = None
    target = bytes(colour)
    for y in range(image.height):
        row = image.rows[y]
        hits = sum(1 for x in range(0, len(row), 3) if row[x : x + 3] == target)
        if hits >= at_least and start is None:
            start = y
        elif hits < at_least and start is not None:
            found.append(range(start, y))
            start = None
    if start is not None:
        found.append(range(start, image.height))
    merged: list[range] = []
    for band in found:  # a series drawn across the whole plot hides its background a moment
        if merged and band.start - merged[-1].stop <= 12:
            merged[-1] = range(merged[-1].start, band.stop)
        else:
            merged.append(band)
    return [band for band in merged if len(band) >= 40]


# --------------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------------


def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the report's screenshot test needs Debian's chromium "
            "package, which `make test` installs (or: apt-get install chromium)"
        )
    return CHROMIUM


def headless(tmp_path: Path, *arguments: str) -> None:
    command = [
        str(chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", *arguments,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(approved().dossier()), encoding="utf-8")
    return path


def test_the_screenshot_shows_the_traffic_plot_and_the_metric_plots(
    report: Path, tmp_path: Path
) -> None:
    shot = tmp_path / "report.png"
    headless(tmp_path, f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", report.as_uri())

    image = read_png(shot)

    assert (image.width, image.height) == (WIDTH, HEIGHT)
    white = (255, 255, 255)
    inked = sum(
        1 for y in range(0, image.height, 4) for x in range(0, image.width, 4)
        if not _near(image.pixel(x, y), white, 8)
    )  # fmt: skip
    assert inked > 0.04 * (image.width // 4) * (image.height // 4), "the page looks blank"
    traffic = bands(image, rgb(TRAFFIC_BACKGROUND))
    metrics = bands(image, rgb(METRIC_BACKGROUND))
    assert len(traffic) == 1, f"the traffic plot's area, found {traffic}"
    assert len(metrics) >= 2, f"the metric plots' areas, found {metrics}"
    (area,) = traffic
    assert all(band.start > area.stop for band in metrics), "the metric plots come after"
    assert count(image, rgb(STABLE_COLOUR), area) >= 300, "the stable revision's line"
    assert count(image, rgb(CANARY_COLOUR), area) >= 200, "the canary's line"
    for band in metrics[:2]:
        assert count(image, rgb(CANARY_COLOUR), band) >= 150, f"canary values in {band}"
        assert count(image, rgb(BASELINE_COLOUR), band) >= 100, f"baseline values in {band}"


def test_the_report_prints_to_a_pdf_of_several_pages(report: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    headless(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", report.as_uri())

    data = pdf.read_bytes()

    assert data.startswith(b"%PDF-")
    assert len(data) > 30_000
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
    assert pages >= 8, f"{pages} pages: each of the 8 sections starts a page"
