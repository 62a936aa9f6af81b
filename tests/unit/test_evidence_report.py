"""The evidence report's HTML: every section there, one inline SVG per plot, nothing fetched
from anywhere, everything from the records escaped, the same bytes for the same dossier,
and the awkward rollouts (no measurements, one evaluation, NaN, still running, hundreds of
evaluations, very long names) still readable."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import datetime
from html.parser import HTMLParser

import pytest

from canary.audit import ChainReport
from canary.evidence import render_html
from canary.evidence.dossier import ChainVerification, Dossier, ModelVersion, build_dossier
from canary.evidence.plots import CANARY_COLOUR, MAX_PLOTTED, downsample, time_ticks, value_ticks
from canary.model import CommandKind
from tests.unit.evidence_story import (
    STORIES,
    Reading,
    Story,
    approved,
    error_rate,
    make_policy,
    passing_first_step,
    promote,
    rollback,
    view,
)

SECTIONS = {
    "summary": "1. Summary",
    "traffic": "2. Traffic share over time",
    "steps": "3. Steps and analysis",
    "approvals": "4. Approvals",
    "manual": "5. Manual actions",
    "verification": "6. Hash-chain verification",
    "other": "7. Other events",
    "records": "Appendix: every record",
}

# Everything the report may contain: text, tables, lists and inline SVG shapes. No script,
# image, link, frame, object, form, foreignObject, <use> or <a>.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "section", "article", "div",
    "h1", "h2", "h3", "h4", "p", "span", "b", "br", "wbr", "pre", "table", "thead", "tbody",
    "tr", "th", "td", "ol", "ul", "li", "svg", "g", "rect", "line", "path", "circle", "text",
}  # fmt: skip
FETCHING_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster",
                       "background", "data", "ping", "manifest", "codebase"}  # fmt: skip

HOSTILE = "<script>alert('x')</script></svg>\"quoted\" & <b>bold</b>"


class Page(HTMLParser):
    """The parts of an HTML page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.ids: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if found.get("id"):
            self.ids.append(str(found["id"]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)

    @property
    def words(self) -> str:
        return "".join(self.text)


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def plot_kinds(page: str) -> list[str]:
    return re.findall(r'<svg class="plot plot-(\w+)"', page)


@pytest.mark.parametrize("name", list(STORIES))
def test_every_section_is_there_in_order(name: str) -> None:
    page = render_html(STORIES[name]().dossier())

    parsed = Page(page)
    assert [i for i in parsed.ids if i in SECTIONS] == list(SECTIONS)
    for title in SECTIONS.values():
        assert title in parsed.words
    assert page.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("name", list(STORIES))
def test_one_inline_svg_per_plot(name: str) -> None:
    dossier = STORIES[name]().dossier()
    page = render_html(dossier)

    checks = [c for s in dossier.steps for c in s.checks]
    assert plot_kinds(page) == ["traffic"] + ["metric"] * len(checks)
    assert page.count("<svg") == page.count("</svg>") == len(svgs(page)) == 1 + len(checks)


def test_a_threshold_that_is_not_in_the_values_units_gets_a_plot_of_its_statistic() -> None:
    story = passing_first_step(Story(make_policy(steps=[10, 100])))
    for minute in (6, 7):  # a sequential test: e-values against 1/alpha
        story.at(minutes=minute).analyse(
            Reading("error-rate-sequential", 0.004, 0.003, 2.5 * minute, 20.0, "Inconclusive")
        )

    page = render_html(story.dossier())

    assert plot_kinds(page).count("statistic") == 1
    assert "The threshold applies to the statistic" in Page(page).words


def test_the_report_fetches_nothing_and_runs_nothing() -> None:
    dossier = approved().dossier()
    page = render_html(dossier)

    parsed = Page(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS
    for tag, attributes in parsed.tags:
        for name, value in attributes.items():
            assert name not in FETCHING_ATTRIBUTES, (tag, name)
            assert not name.startswith("on"), (tag, name)
            assert "://" not in (value or ""), (tag, name, value)
            assert "url(" not in (value or "").lower(), (tag, name, value)
    style = "".join(parsed.styles).lower()
    assert "url(" not in style
    assert "@import" not in style
    assert "://" not in style
    # URLs of the evidence (the Prometheus server, storage URIs) are text, never followed.
    assert "http://prometheus.monitoring.svc:9090" in parsed.words
    assert "s3://models/r2" in parsed.words.replace("\u200b", "")


def hostile_dossier() -> Dossier:
    story = passing_first_step(Story(make_policy(steps=[10, 50, 100])))
    story.at(minutes=6).command(CommandKind.PAUSE, HOSTILE, who=f"eve{HOSTILE}")
    dossier = story.dossier()
    step = dossier.steps[0]
    checks = tuple(
        replace(
            c,
            name=f"{c.name}{HOSTILE}",
            evaluations=tuple(replace(e, query=HOSTILE, message=HOSTILE) for e in c.evaluations),
        )
        for c in step.checks
    )
    summary = dossier.summary
    assert summary.canary is not None
    return replace(
        dossier,
        summary=replace(
            summary,
            namespace=HOSTILE,
            name=HOSTILE,
            policy=HOSTILE,
            canary=replace(summary.canary, storage_uri=HOSTILE, model_name=HOSTILE),
        ),
        steps=(replace(step, checks=checks), *dossier.steps[1:]),
    )


def test_everything_from_the_records_is_escaped() -> None:
    dossier = hostile_dossier()

    page = render_html(dossier)

    parsed = Page(page)
    assert "script" not in {tag for tag, _ in parsed.tags}
    assert "<script" not in page.lower()
    assert "<b>bold</b>" not in page
    assert page.count("</svg>") == len(plot_kinds(page))  # only our own plots close an svg
    assert parsed.words.count(HOSTILE) >= 6  # shown as text: names, reason, person, check, query


def test_the_same_dossier_gives_the_same_bytes() -> None:
    dossier = approved().dossier()

    first = render_html(dossier)

    assert render_html(dossier) == first
    assert render_html(Dossier.from_json(dossier.to_json())) == first
    assert render_html(approved().dossier()) == first  # the same records, built again


def test_a_printable_page_for_a4_in_black_and_white() -> None:
    page = render_html(promote().dossier())

    assert "@page { size: A4;" in page
    assert "break-before: page" in page
    # the series differ by line style and marker shape, not by colour alone
    traffic = svgs(page)[0]
    assert 'stroke-dasharray="9 4"' in traffic  # the canary's dashes; the stable's is solid
    assert "<circle" in traffic
    assert "<rect" in traffic


def test_the_verification_box_says_what_was_found() -> None:
    story = rollback()
    head = story.records[-1]
    anchored = ChainVerification.from_report(
        ChainReport(True, head.seq, head.record_hash, None, None),
        head_seq=head.seq,
        anchored_seq=4,
        anchored_at=story.now,
        anchor_key_id="ed25519:7f3a",
    )
    broken = ChainVerification.from_report(
        ChainReport(False, 3, "b" * 64, 4, "record 4: hash mismatch"), head_seq=3
    )

    contradicted = replace(anchored, anchored_seq=0, anchor_problems=("record 4 was rewritten",))

    good = Page(render_html(story.dossier(verification=anchored))).words
    rewritten = Page(render_html(story.dossier(verification=contradicted))).words
    bad_page = render_html(story.dossier(verification=broken))
    unverified = render_html(
        build_dossier(rollout=story.row(), records=story.records, as_of=story.now)
    )

    assert "VERIFIED: the audit chain is intact" in good
    assert "Anchored outside the database up to record #4" in good
    assert f"{head.seq - 4} records after #4 are not yet anchored" in good
    assert 'class="box failed"' in bad_page
    assert "The chain fails verification at record #4: record 4: hash mismatch" in bad_page
    assert "NOT VERIFIED" in bad_page
    assert "NOT VERIFIED" in rewritten
    assert "The signed checkpoints contradict the database: record 4 was rewritten" in rewritten
    assert "No signed checkpoint anchors this chain" in rewritten
    assert 'class="box unverified"' in unverified
    assert "NOT CHECKED" in unverified
    assert head.record_hash in Page(render_html(story.dossier())).words.replace("\u200b", "")


# --------------------------------------------------------------------------------------------
# awkward rollouts
# --------------------------------------------------------------------------------------------


def test_a_step_without_measurements() -> None:
    story = Story(make_policy(steps=[10, 100])).start(view(10, ready=False))
    story.at(seconds=30).see(view(10))

    page = render_html(story.dossier())

    assert "No measurements were recorded at this step." in page
    assert plot_kinds(page) == ["traffic"]


def test_a_single_evaluation_is_a_point_not_a_line() -> None:
    story = Story(make_policy(steps=[10, 100])).start(view(10, ready=False))
    story.at(seconds=30).see(view(10))
    story.at(minutes=1).analyse(error_rate(0.004, 0.003))

    page = render_html(story.dossier())

    (metric,) = svgs(page)[1:]
    assert f'fill="{CANARY_COLOUR}"' in metric  # the canary's marker
    assert not re.search(f'<path [^>]*stroke="{CANARY_COLOUR}"', metric)  # and no line


def test_values_that_are_not_finite_are_listed_not_plotted() -> None:
    story = Story(make_policy(steps=[10, 100])).start(view(10, ready=False))
    story.at(seconds=30).see(view(10))
    story.at(minutes=1).analyse(error_rate(0.004, 0.003))
    story.at(minutes=2).analyse(Reading("error-rate", math.nan, math.inf, None, 0.02, "Error"))
    story.at(minutes=3).analyse(error_rate(0.005, 0.003))

    page = render_html(story.dossier())

    (metric,) = svgs(page)[1:]
    assert not re.search(r'="[^"]*(nan|inf)', metric, flags=re.I)
    words = Page(page).words
    assert "NaN" in words
    assert "+Inf" in words
    assert "2 values are not finite (NaN or ±Inf): listed, not plotted." in words


def test_a_rollout_in_progress_says_as_of_when() -> None:
    story = passing_first_step(Story(make_policy(steps=[10, 50, 100], stepHold="1h")))

    words = Page(render_html(story.dossier())).words

    assert "In progress as of 2026-11-23 10:05:30 UTC (phase Progressing): holding 10%" in words
    assert "not ended in these records" in words


def test_hundreds_of_evaluations_are_downsampled_in_the_plot_and_summarised_in_the_table() -> None:
    story = Story(make_policy(steps=[10, 100], stepHold="5h")).start(view(10, ready=False))
    story.at(seconds=30).see(view(10))
    for n in range(400):
        canary = 0.004 + (0.003 if n % 50 == 7 else 0.0) + (n % 10) / 10000
        story.at(minutes=1 + n / 2).analyse(error_rate(canary, 0.003, limit=0.02))

    page = render_html(story.dossier())

    (metric,) = svgs(page)[1:]
    canary_path = re.search(rf'<path d="([^"]*)" fill="none" stroke="{CANARY_COLOUR}"', metric)
    assert canary_path is not None
    points = canary_path.group(1).count("L") + 1
    assert 100 <= points <= MAX_PLOTTED + 2
    words = Page(page).words
    assert "400 evaluations; the plot shows" in words
    assert "evaluations not listed here" in words
    assert "Analysis rounds: 400 (400 Successful)" in words


def test_very_long_names_wrap_in_tables_and_are_shortened_in_plots() -> None:
    long = "scorer-" + "x" * 300
    dossier = promote().dossier()
    summary = dossier.summary
    assert summary.canary is not None
    dossier = replace(
        dossier,
        summary=replace(summary, name=long, canary=replace(summary.canary, storage_uri=long)),
    )
    dossier = replace(
        dossier,
        summary=replace(
            dossier.summary, stable=ModelVersion(long + "-stable", None, "s3://m/old", None)
        ),
    )

    page = render_html(dossier)

    assert long in Page(page).words  # complete in the tables (with break opportunities)
    assert "<wbr>" in page
    legend = re.findall(r"<text[^>]*><title>([^<]*)</title>([^<]*)</text>", svgs(page)[0])
    assert legend
    assert all(len(shown) <= 56 for _, shown in legend)


def test_an_approval_timeline_names_approver_and_change() -> None:
    words = Page(render_html(approved().dossier())).words

    assert "Alice Approver" in words
    assert "CHG0031337" in words
    assert "reviewed the canary evidence; fine to promote" in words
    assert "approval.change_opened" in words


def test_a_failed_analysis_and_the_rollback_are_marked_on_the_plots() -> None:
    page = render_html(rollback().dossier())

    words = Page(page).words
    assert "rollback decided" in words
    assert "rolled back" in words
    traffic, *metrics = svgs(page)
    assert traffic.count('stroke-dasharray="7 4"') == 2  # the two rollback events' lines
    latency_plot = next(m for m in metrics if "latency-p99" in m)
    assert latency_plot.count('r="8" fill="none" stroke="#C00000"') == 1  # the failure ringed
    assert "verdict Failed" in latency_plot


# --------------------------------------------------------------------------------------------
# axes and downsampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "labels"),
    [
        pytest.param(
            "2026-11-23T10:00:00", "2026-11-23T10:12:00",
            ["10:00", "10:02", "10:04", "10:06", "10:08", "10:10", "10:12"], id="minutes",
        ),
        pytest.param(
            "2026-11-23T10:00:05", "2026-11-23T10:00:35",
            ["10:00:05", "10:00:10", "10:00:15", "10:00:20", "10:00:25", "10:00:30", "10:00:35"],
            id="seconds",
        ),
        pytest.param(
            "2026-11-23T22:30:00", "2026-11-24T01:10:00",
            ["11-23 22:30", "11-23 23:00", "11-23 23:30", "11-24 00:00", "11-24 00:30",
             "11-24 01:00"],
            id="across-midnight",
        ),
        pytest.param(
            "2026-11-20T00:00:00", "2026-11-30T00:00:00",
            ["2026-11-21", "2026-11-23", "2026-11-25", "2026-11-27", "2026-11-29"],
            id="days",
        ),
    ],
)  # fmt: skip
def test_time_ticks_are_round_utc_times(start: str, end: str, labels: list[str]) -> None:
    ticks = time_ticks(
        datetime.fromisoformat(start + "+00:00"), datetime.fromisoformat(end + "+00:00")
    )

    assert [label for _, label in ticks] == labels


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0.0, 100.0, [0.0, 25.0, 50.0, 75.0, 100.0]),
        (0.0, 0.0245, [0.0, 0.01, 0.02]),
        (0.196, 0.244, [0.2, 0.22, 0.24]),
        (-3.0, 3.0, [-2.0, 0.0, 2.0]),
    ],
)
def test_value_ticks_are_round_numbers(low: float, high: float, ticks: list[float]) -> None:
    assert value_ticks(low, high) == pytest.approx(ticks)


def test_downsampling_keeps_the_ends_the_failures_and_the_extremes() -> None:
    story = Story(make_policy(steps=[10, 100], stepHold="5h")).start(view(10, ready=False))
    story.at(seconds=30).see(view(10))
    for n in range(300):
        canary = 0.011 if n == 150 else 0.004 + (n % 7) / 10000
        story.at(minutes=1 + n / 2).analyse(error_rate(canary, 0.003, limit=0.02))
    (check,) = story.dossier().steps[0].checks
    evaluations = list(check.evaluations)
    evaluations[77] = replace(evaluations[77], verdict="Inconclusive")

    kept = downsample(evaluations, 60)

    assert len(kept) <= 62
    assert kept[0] is evaluations[0]
    assert kept[-1] is evaluations[-1]
    assert evaluations[77] in kept
    assert evaluations[150] in kept  # the spike
    assert kept == sorted(kept, key=lambda e: e.at)
