"""The evidence report of one rollout: one self-contained, printable HTML file.

:func:`render_html` turns a :class:`~canary.evidence.dossier.Dossier` into HTML with inline
CSS and inline SVG plots (:mod:`canary.evidence.plots`): no script, no image, font, style
sheet or link fetched from anywhere, so the file reads the same offline, years later. URLs
found in the evidence (a Prometheus server, a model's storage URI) are shown as text, never
followed.

Sections: the summary (with the verification's verdict), the traffic share over time, the
steps with each check's evaluations, the approvals, the people's actions, the hash-chain
verification, other events, and an index of every record. Printed on A4, each section
starts a page; everything reads in black and white (line styles, marker shapes, words).
Every string from the dossier is HTML-escaped. The output depends on the dossier only (the
same dossier gives the same bytes).
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from canary.evidence.dossier import (
    ApprovalRequest,
    CheckHistory,
    Dossier,
    Evaluation,
    ModelVersion,
    Person,
    Step,
    TrafficIntent,
)
from canary.evidence.plots import (
    MAX_PLOTTED,
    Marker,
    format_number,
    markers_of,
    metric_plot,
    statistic_plot,
    traffic_plot,
)

__all__ = ["TABLE_HEAD", "TABLE_TAIL", "render_html"]

TABLE_HEAD: Final = 10
TABLE_TAIL: Final = 10
"""A long table of evaluations shows its first and last rows, and every notable one."""

_NOTABLE_CAP: Final = 40
_LONG_TABLE: Final = TABLE_HEAD + TABLE_TAIL + 10

_T = TypeVar("_T")

_STYLE: Final = """
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 14px;
  line-height: 1.4; color: #111; background: #fff; margin: 0 auto; max-width: 1040px;
  padding: 16px 20px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; border-bottom: 2px solid #333; padding-bottom: 3px; margin: 30px 0 8px; }
h3 { font-size: 16px; margin: 20px 0 6px; border-left: 5px solid #555; padding-left: 8px; }
h4 { font-size: 14px; margin: 14px 0 4px; }
p { margin: 4px 0 8px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 12.5px; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #eee; font-weight: bold; }
table.facts th { width: 24%; }
tr.gap td { text-align: center; font-style: italic; color: #444; background: #fafafa; }
.mono, code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace;
  font-size: 11.5px; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f6f6;
  border: 1px solid #ddd; padding: 4px 6px; margin: 4px 0 8px; }
.lead { font-size: 16px; margin: 0 0 4px; }
.note { color: #444; font-size: 12.5px; }
.outcome { font-size: 17px; font-weight: bold; margin: 8px 0; }
.bad { color: #A00018; font-weight: bold; }
.good { color: #17692F; font-weight: bold; }
.box { border: 4px solid #555; padding: 10px 14px; margin: 10px 0 16px; }
.box .headline { font-size: 18px; font-weight: bold; margin: 0 0 4px; }
.box.verified { border-color: #17692F; background: #E6F4EA; }
.box.failed { border-color: #A00018; background: #FDE7E9; border-width: 6px; }
.box.unverified { border-color: #8A6D00; background: #FFF6D6; border-style: dashed; }
.box ul { margin: 4px 0 0 18px; padding: 0; }
ol.key { columns: 2; column-gap: 28px; font-size: 12.5px; margin: 4px 0 10px; padding-left: 24px; }
ol.key li, ol.timeline li { break-inside: avoid; }
ol.timeline { font-size: 12.5px; margin: 4px 0 12px; padding-left: 20px; }
.plot-block { break-inside: avoid; page-break-inside: avoid; margin: 4px 0 10px; }
svg.plot { display: block; width: 100%; height: auto; margin: 4px 0; }
.step { margin-bottom: 18px; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  section { break-before: page; page-break-before: always; }
  section.first { break-before: auto; page-break-before: auto; }
  h2, h3, h4 { break-after: avoid; page-break-after: avoid; }
  tr { break-inside: avoid; page-break-inside: avoid; }
  .box, th, tr.gap td { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  ol.key { columns: 1; }
}
"""


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


_BREAK_AFTER: Final = 16  # a long token (a hash, a URI, a long name) may wrap every 16 chars
_LONG_TOKEN: Final = re.compile(r"\S{25,}")


def _e(text: object) -> str:
    """``text`` escaped for the body of the page; a long unbroken token gets invisible
    break opportunities (``<wbr>``), so a table keeps to the page's width."""
    raw = str(text)
    out: list[str] = []
    position = 0
    for match in _LONG_TOKEN.finditer(raw):
        out.append(html.escape(raw[position : match.start()], quote=True))
        token = match.group()
        pieces = [token[i : i + _BREAK_AFTER] for i in range(0, len(token), _BREAK_AFTER)]
        out.append("<wbr>".join(html.escape(piece, quote=True) for piece in pieces))
        position = match.end()
    out.append(html.escape(raw[position:], quote=True))
    return "".join(out)


def _t(at: datetime | None) -> str:
    """A time for a table: UTC to the second."""
    if at is None:
        return "—"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _tz(at: datetime | None) -> str:
    """A time in prose: UTC to the second, said to be UTC."""
    return "—" if at is None else _t(at) + " UTC"


def _duration(span: timedelta | None) -> str:
    if span is None:
        return "—"
    seconds = int(span.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if days or hours:
        parts.append(f"{hours} h")
    if days or hours or minutes:
        parts.append(f"{minutes} min")
    parts.append(f"{seconds} s")
    return " ".join(parts)


def _or_dash(text: object | None) -> str:
    return "—" if text is None or text == "" else _e(text)


def _who(person: Person | None) -> str:
    if person is None:
        return "—"
    text = f"{_e(person.id)} <span class='note'>({_e(person.kind)})</span>"
    extra = []
    if person.uid:
        extra.append(f"uid {_e(person.uid)}")
    if person.groups:
        extra.append("groups " + ", ".join(_e(g) for g in person.groups))
    if extra:
        text += f"<br><span class='note'>{'; '.join(extra)}</span>"
    return text


def _note(html_text: str) -> str:
    return f"<span class='note'>{html_text}</span>"


def _mono(text: object) -> str:
    return f"<span class='mono'>{_or_dash(text)}</span>"


def _seq(seq: int | None) -> str:
    return "<span class='note'>table</span>" if seq is None else f"#{seq}"


def _row(cells: Sequence[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _table(head: Sequence[str], rows: Sequence[str], css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f"<table{cls}><thead>{_row([_e(h) for h in head], header=True)}</thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def _picked(
    items: Sequence[_T], notable: Callable[[_T], bool], columns: int, what: str
) -> list[tuple[_T | None, str]]:
    """The rows of a long table: the first and last ones and up to ``_NOTABLE_CAP`` notable
    ones in between, with a gap row saying what was left out. Short tables are complete."""
    if len(items) <= _LONG_TABLE:
        return [(item, "") for item in items]
    head = set(range(TABLE_HEAD)) | set(range(len(items) - TABLE_TAIL, len(items)))
    middle = [i for i in range(TABLE_HEAD, len(items) - TABLE_TAIL) if notable(items[i])]
    shown = sorted(head | set(middle[:_NOTABLE_CAP]))
    out: list[tuple[_T | None, str]] = []
    previous = -1
    for index in shown:
        skipped = index - previous - 1
        if skipped:
            gap = f"… {skipped} {what} not listed here (the dossier's JSON has every one) …"
            out.append((None, f'<tr class="gap"><td colspan="{columns}">{_e(gap)}</td></tr>'))
        out.append((items[index], ""))
        previous = index
    return out


def _model(model: ModelVersion | None) -> str:
    if model is None:
        return "not recorded"
    parts = [f"revision <b>{_or_dash(model.revision)}</b>"]
    if model.model_name:
        parts.append(f"model {_e(model.model_name)}")
    parts.append(f"storageUri <span class='mono'>{_or_dash(model.storage_uri)}</span>")
    digest = model.artifact_digest or "not recorded"
    parts.append(f"artifact digest <span class='mono'>{_e(digest)}</span>")
    return "<br>".join(parts)


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _verification_headline(dossier: Dossier) -> tuple[str, str]:
    status = dossier.verification.status
    if status == "verified":
        return status, "VERIFIED: the audit chain is intact"
    if status == "failed":
        return status, "NOT VERIFIED: the audit records fail verification"
    return status, "NOT CHECKED: the audit chain was not verified for this report"


def _outcome_line(dossier: Dossier) -> str:
    summary = dossier.summary
    phase = summary.phase or "unknown phase"
    if summary.in_progress:
        text = f"In progress as of {_tz(dossier.as_of)} (phase {phase})"
    else:
        text = f"Ended in phase {phase}"
        if summary.ended_at is not None:
            text += f" at {_tz(summary.ended_at)}"
    if summary.reason:
        text += f": {summary.reason}"
    bad = phase in ("RolledBack", "Failed", "Aborted", "Rejected", "ManuallyRolledBack")
    css = "outcome bad" if bad else "outcome"
    return f'<p class="{css}">{_e(text)}</p>'


def _summary(dossier: Dossier) -> str:
    s = dossier.summary
    status, headline = _verification_headline(dossier)
    steps = " → ".join(f"{p} %" for p in s.policy_steps) if s.policy_steps else "not recorded"
    if s.started_by is not None:
        started_by = _who(s.started_by)
        if s.started_by_source:
            started_by += f"<br><span class='note'>from {_e(s.started_by_source)}</span>"
    else:
        started_by = "not recorded (no command or admitted change names a person)"
    if s.detected_by is not None:
        started_by += f"<br><span class='note'>recorded by {_who(s.detected_by)}</span>"
    ended = _tz(s.ended_at) if not s.in_progress else f"in progress as of {_tz(dossier.as_of)}"
    rows = [
        ("InferenceService", f"{_or_dash(s.namespace)}/{_or_dash(s.name)}"
         + (f" <span class='note'>uid {_e(s.isvc_uid)}</span>" if s.isvc_uid else "")),
        ("Rollout", f"<span class='mono'>{_e(s.rollout_id)}</span>"),
        ("Policy", f"{_or_dash(s.policy)} <span class='note'>(steps {_e(steps)})</span>"),
        ("KServe mode", _or_dash(s.mode)),
        ("Stable model (before)", _model(s.stable)),
        ("Canary model (new)", _model(s.canary)),
    ]  # fmt: skip
    if s.challenger:
        rows.append(("Challenger InferenceService", _e(s.challenger)))
    rows += [
        ("Started by", started_by),
        ("Started", _tz(s.started_at)),
        ("Ended", ended),
        ("Duration", _duration(s.duration(dossier.as_of))),
        ("Phase", _or_dash(s.phase)),
        ("Reason", _or_dash(s.reason)),
        ("Approvals", _approvals_line(dossier.approvals)),
        ("Analysis", _analysis_line(dossier.steps)),
        ("Audit records", f"{s.records}" + (
            f" (#{s.first_seq} to #{s.last_seq})" if s.first_seq is not None else "")),
    ]  # fmt: skip
    return (
        '<section id="summary" class="first"><h2>1. Summary</h2>'
        f'<div class="box {status}"><p class="headline">{_e(headline)}</p>'
        f"<p>{_e(_verification_sentence(dossier))} See section 6.</p></div>"
        f"{_outcome_line(dossier)}{_facts(rows)}</section>"
    )


def _approvals_line(approvals: Sequence[ApprovalRequest]) -> str:
    if not approvals:
        return "none requested"
    lines = []
    for a in approvals:
        text = f"{a.state}"
        if a.approver:
            text += f" by {a.approver}"
        if a.change_number:
            text += f", change {a.change_number}"
        if a.decided_at:
            text += f", {_tz(a.decided_at)}"
        lines.append(_e(text))
    return "<br>".join(lines)


def _analysis_line(steps: Sequence[Step]) -> str:
    rounds = [r for s in steps for r in s.rounds]
    if not rounds:
        return "no analysis recorded"
    counts = Counter(r.verdict for r in rounds)
    last = max(rounds, key=lambda r: r.seq)
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    return _e(f"{len(rounds)} rounds ({tally}); the last {last.verdict} at {_tz(last.at)}")


def _verification_sentence(dossier: Dossier) -> str:
    v = dossier.verification
    chain, records = v.chain, v.records
    if records.mismatched:
        listed = ", ".join(f"#{s}" for s in records.mismatched[:10])
        return (
            f"{len(records.mismatched)} of this rollout's records do not hash as stored ({listed})."
        )
    if records.broken_links:
        listed = ", ".join(f"#{s}" for s in records.broken_links[:10])
        return f"The chain's links are broken at {listed}."
    if chain is None:
        return (
            f"Each of this rollout's {records.checked} records hashes as stored, but the "
            "chain as a whole was not verified."
        )
    if not chain.ok:
        return f"The chain breaks at record #{chain.first_bad_seq}: {chain.problem}."
    if chain.anchor_problems:
        return "The signed checkpoints contradict the database: " + "; ".join(chain.anchor_problems)
    text = f"{chain.records_checked} records verified"
    if chain.anchored:
        text += f", anchored up to #{chain.anchored_seq} by a signed checkpoint"
    else:
        text += "; no signed checkpoint anchors them outside the database"
    return text + "."


def _traffic(dossier: Dossier) -> str:
    markers, left_out = markers_of(dossier)
    plot = traffic_plot(dossier, markers)
    parts = [
        '<section id="traffic"><h2>2. Traffic share over time</h2>',
        "<p class='note'>Lines: the share of live traffic each revision served, as the "
        "records show it (the status seen when a change was asked for, a step or promotion "
        "the status showed, a rollback completed). Triangles: traffic changes asked for "
        "(filled: written and then seen in the status; hollow: written, never seen). "
        "Crosses: changes that failed or were abandoned; circles: changes with no outcome "
        "recorded. Numbered lines: the events listed below the plot.</p>",
        f'<div class="plot-block">{plot}</div>',
        _key(markers, left_out),
        "<h3>Traffic changes asked for</h3>",
        _intents(dossier.intents),
        "</section>",
    ]
    return "".join(parts)


def _key(markers: Sequence[Marker], left_out: int) -> str:
    if not markers:
        return "<p class='note'>No approval, promotion, rollback or command to mark.</p>"
    items = "".join(
        f"<li value='{m.number}'><b>{_e(m.label)}</b> {_e(_t(m.at))} ({_seq(m.seq)})"
        + (f": {_e(m.reason)}" if m.reason else "")
        + "</li>"
        for m in markers
    )
    more = (
        f"<p class='note'>{left_out} more events are in the record index.</p>" if left_out else ""
    )
    return f'<ol class="key">{items}</ol>{more}'


def _intents(intents: Sequence[TrafficIntent]) -> str:
    if not intents:
        return "<p>No traffic change was asked for in this rollout's records.</p>"
    rows = []
    for item, gap in _picked(
        intents, lambda i: i.outcome != "applied" or i.seen_at is None, 9, "traffic changes"
    ):
        if item is None:
            rows.append(gap)
            continue
        target = f"{_or_dash(item.revision)} to {_or_dash(item.percent)} %"
        if item.revision is None and item.storage_uri:
            target = f"new model {_mono(item.storage_uri)} to {_or_dash(item.percent)} %"
        outcome = _e(item.outcome)
        if item.outcome in ("failed", "abandoned", "unconfirmed"):
            outcome = f"<span class='bad'>{outcome}</span>"
        after = f"{_seq(item.outcome_seq)} {_e(_t(item.outcome_at))}" if item.outcome_seq else "—"
        seen = (
            _e(_t(item.seen_at))
            if item.seen_at
            else ("never" if item.outcome == "applied" else "—")
        )
        rows.append(
            _row(
                [
                    _seq(item.seq), _e(_t(item.at)), _who(item.actor), _or_dash(item.purpose),
                    target, outcome, after, seen,
                    _or_dash(item.outcome_reason or item.reason),
                ]
            )
        )  # fmt: skip
    head = ["record", "time (UTC)", "by", "purpose", "asked", "outcome", "outcome record",
            "seen in status", "reason"]  # fmt: skip
    return _table(head, rows)


def _steps(dossier: Dossier) -> str:
    parts = ['<section id="steps"><h2>3. Steps and analysis</h2>']
    if not dossier.steps:
        parts.append("<p>No step was recorded for this rollout.</p>")
    for step in dossier.steps:
        parts.append(_step(step))
    parts.append("</section>")
    return "".join(parts)


def _step_title(step: Step) -> str:
    if step.shadow:
        mirror = f", {step.percent} % of live traffic mirrored" if step.percent is not None else ""
        return f"Shadow comparison{mirror}"
    percent = f": {step.percent} % of live traffic" if step.percent is not None else ""
    return f"Step {step.index + 1}{percent}"


def _step(step: Step) -> str:
    facts = [
        ("Decided", _tz(step.requested_at)),
        ("In force (status showed it)" if not step.shadow else "Mirroring began",
         _tz(step.reached_at) if step.reached_at else "never seen"),
        ("Ended", _tz(step.ended_at) if step.ended_at else "not ended in these records"),
    ]  # fmt: skip
    if step.reached_at and step.ended_at:
        facts.append(("Time in force", _duration(step.ended_at - step.reached_at)))
    parts = [
        f'<article class="step" id="step-{step.index}"><h3>{_e(_step_title(step))}</h3>',
        _facts(facts),
    ]
    if step.rounds:
        parts.append(_rounds(step))
    if not step.checks:
        parts.append("<p>No measurements were recorded at this step.</p>")
    for check in step.checks:
        parts.append(_check(step, check))
    parts.append("</article>")
    return "".join(parts)


def _rounds(step: Step) -> str:
    counts = Counter(r.verdict for r in step.rounds)
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    rows = []
    for item, gap in _picked(step.rounds, lambda r: r.verdict != "Successful", 5, "rounds"):
        if item is None:
            rows.append(gap)
            continue
        data = {True: "yes", False: "no", None: "—"}[item.sufficient_data]
        verdict = _e(item.verdict) + (
            " <span class='note'>(fast path)</span>" if item.fast_path else ""
        )
        if item.verdict == "Failed":
            verdict = f"<span class='bad'>{verdict}</span>"
        rows.append(_row([_seq(item.seq), _e(_t(item.at)), verdict, data, _or_dash(item.summary)]))
    return f"<h4>Analysis rounds: {len(step.rounds)} ({_e(tally)})</h4>" + _table(
        ["record", "time (UTC)", "verdict", "enough data", "summary"], rows
    )


def _threshold(e: Evaluation) -> str:
    text = format_number(e.threshold)
    if e.limit is not None and e.threshold is not None and e.limit != e.threshold:
        text += f" (value limit {format_number(e.limit)})"
    return _e(text)


def _check(step: Step, check: CheckHistory) -> str:
    latest = check.latest
    assert latest is not None
    title = f"{check.name}: latest {latest.verdict}"
    title += (
        f" (canary {format_number(latest.canary_value)}, baseline "
        f"{format_number(latest.baseline_value)}, threshold {format_number(latest.threshold)})"
    )
    label = f"{check.name} at {_step_title(step)}"
    parts = [f'<div class="check"><h4>{_e(title)}</h4>']
    plot = metric_plot(check, f"{label}: canary and baseline values")
    extra = statistic_plot(check, f"{label}: the statistic judged against its threshold")
    if plot is None:
        parts.append("<p class='note'>No finite value to plot.</p>")
    else:
        parts.append(f'<div class="plot-block">{plot}</div>')
    if extra is not None:
        parts.append(
            "<p class='note'>The threshold applies to the statistic (not to the values "
            f'themselves):</p><div class="plot-block">{extra}</div>'
        )
    notes = []
    total = len(check.evaluations)
    if total > MAX_PLOTTED:
        notes.append(
            f"{total} evaluations; the plot shows {MAX_PLOTTED} or so of them (the first, the "
            "last, those that did not pass, and the extremes of the rest)."
        )
    hidden = sum(
        1
        for e in check.evaluations
        for v in (e.canary_value, e.baseline_value)
        if v is not None and not math.isfinite(v)
    )
    if hidden:
        notes.append(f"{hidden} values are not finite (NaN or ±Inf): listed, not plotted.")
    if any(e.dry_run for e in check.evaluations):
        notes.append("Dry-run evaluations were recorded but could not fail the rollout.")
    parts += [f"<p class='note'>{_e(n)}</p>" for n in notes]
    rows = []
    for item, gap in _picked(
        check.evaluations, lambda e: e.verdict != "Successful", 9, "evaluations"
    ):
        if item is None:
            rows.append(gap)
            continue
        verdict = _e(item.verdict) + (
            " <span class='note'>(dry run)</span>" if item.dry_run else ""
        )
        if item.verdict == "Failed":
            verdict = f"<span class='bad'>{verdict}</span>"
        samples = f"{_or_dash(item.canary_samples)} / {_or_dash(item.baseline_samples)}"
        rows.append(
            _row(
                [
                    _seq(item.seq), _e(_t(item.at)), _e(format_number(item.canary_value)),
                    _e(format_number(item.baseline_value)), samples,
                    _e(format_number(item.statistic)), _threshold(item), verdict,
                    _or_dash(item.message),
                ]
            )
        )  # fmt: skip
    head = ["record", "time (UTC)", "canary", "baseline", "samples (canary / baseline)",
            "statistic", "threshold", "verdict", "message"]  # fmt: skip
    parts.append(_table(head, rows))
    queries = sorted({(e.query, e.prometheus_url) for e in check.evaluations})
    for query, url in queries[:5]:
        parts.append(
            f"<p class='note'>Query on <span class='mono'>{_e(url or 'an unrecorded server')}"
            f"</span>:</p><pre>{_e(query)}</pre>"
        )
    if len(queries) > 5:
        parts.append(f"<p class='note'>{len(queries) - 5} more queries in the dossier.</p>")
    parts.append(
        f"<p class='note'>Latest response digest: <span class='mono'>"
        f"{_or_dash(latest.response_digest)}</span></p></div>"
    )
    return "".join(parts)


def _approvals(dossier: Dossier) -> str:
    parts = ['<section id="approvals"><h2>4. Approvals</h2>']
    if not dossier.approvals:
        parts.append("<p>No approval was requested for this rollout.</p></section>")
        return "".join(parts)
    rows = []
    for a in dossier.approvals:
        state = _e(a.state)
        if a.state in ("rejected", "expired", "cancelled"):
            state = f"<span class='bad'>{state}</span>"
        elif a.state == "approved":
            state = f"<span class='good'>{state}</span>"
        if a.late:
            state += "<br><span class='note'>a decision arrived late</span>"
        step = "—" if a.step_index is None else f"step {a.step_index + 1}"
        if a.percent is not None:
            step += f" ({a.percent} %)"
        approver = _or_dash(a.approver) + (
            f"<br><span class='note'>{_e(a.approver_id)}</span>" if a.approver_id else ""
        )
        callback = "—"
        if a.webhook_id or a.payload_digest:
            callback = (
                f"webhook <span class='mono'>{_or_dash(a.webhook_id)}</span><br>"
                f"digest <span class='mono'>{_or_dash(a.payload_digest)}</span>"
            )
        closed = "—" if a.close_code is None else f"{_e(a.close_code)} {_e(_t(a.closed_at))}"
        rows.append(
            _row(
                [
                    step + f"<br><span class='note'>attempt {a.attempt}</span>",
                    f"{_or_dash(a.gate)}<br>{_note(_or_dash(a.risk_owner_group))}",
                    f"{_e(_t(a.requested_at))}<br>{_note('by ' + _or_dash(a.requested_by))}",
                    _e(_t(a.deadline)), state, _or_dash(a.change_number), approver,
                    _e(_t(a.decided_at)), _or_dash(a.comments), callback, closed,
                ]
            )
        )  # fmt: skip
    head = ["step", "gate / group", "requested", "deadline", "state", "change", "approver",
            "decided (UTC)", "comments", "callback", "change closed"]  # fmt: skip
    parts.append(_table(head, rows))
    for a in dossier.approvals:
        if a.discrepancy:
            parts.append(f"<p class='bad'>Discrepancy: {_e(a.discrepancy)}</p>")
    parts.append("<h3>Timeline</h3>")
    for a in dossier.approvals:
        step = "unknown step" if a.step_index is None else f"step {a.step_index + 1}"
        parts.append(
            f"<h4>{_e(step)}, attempt {a.attempt}"
            + (f", change {_e(a.change_number)}" if a.change_number else "")
            + "</h4><ol class='timeline'>"
        )
        for event in a.events:
            detail = []
            if event.change_number:
                detail.append(f"change {_e(event.change_number)}")
            if event.webhook_id:
                detail.append(f"webhook <span class='mono'>{_e(event.webhook_id)}</span>")
            if event.payload_digest:
                detail.append(
                    f"payload digest <span class='mono'>{_e(event.payload_digest)}</span>"
                )
            parts.append(
                f"<li>{_e(_t(event.at))} ({_seq(event.seq)}) <b>{_e(event.action)}</b> "
                f"by {_who(event.actor)}: {_e(event.text)}"
                + (f"<br><span class='note'>{'; '.join(detail)}</span>" if detail else "")
                + "</li>"
            )
        parts.append("</ol>")
    parts.append("</section>")
    return "".join(parts)


def _manual(dossier: Dossier) -> str:
    parts = ['<section id="manual"><h2>5. Manual actions</h2>']
    if not dossier.manual:
        parts.append("<p>No person acted on this rollout.</p></section>")
        return "".join(parts)
    rows = []
    for m in dossier.manual:
        result = (
            "accepted" if m.accepted else f"<span class='bad'>refused</span>: {_or_dash(m.result)}"
        )
        rows.append(
            _row([_seq(m.seq), _e(_t(m.at)), _who(m.actor), _e(m.what), _or_dash(m.reason), result])
        )
    parts.append(_table(["record", "time (UTC)", "who", "what", "reason given", "result"], rows))
    parts.append("</section>")
    return "".join(parts)


def _verification(dossier: Dossier) -> str:
    v = dossier.verification
    status, headline = _verification_headline(dossier)
    chain, records = v.chain, v.records
    items: list[str] = []
    if chain is not None:
        head = f"#{chain.head_seq}" if chain.head_seq is not None else "the head"
        when = f" at {_tz(chain.verified_at)}" if chain.verified_at else ""
        if chain.ok:
            items.append(f"The chain is consistent{when}: {chain.records_checked} records, "
                         "every hash recomputed and every link checked.")  # fmt: skip
        else:
            items.append(
                f"The chain fails verification{when} at record #{chain.first_bad_seq}: "
                f"{chain.problem}. {chain.records_checked} records before it passed."
            )
            if records.after_break:
                items.append(
                    f"{records.after_break} of this rollout's records lie at or after the "
                    "break: treat them as untrustworthy."
                )
        items.append(
            f"Head of the verified chain: {head}, hash "
            f"<span class='mono'>{_e(chain.head_hash)}</span>."
        )
        for problem in chain.anchor_problems:
            items.append(f"<b>The signed checkpoints contradict the database:</b> {_e(problem)}")
        if chain.anchored:
            anchor = (
                f"Anchored outside the database up to record #{chain.anchored_seq} by a "
                f"checkpoint signed at {_tz(chain.anchored_at)} with key "
                f"<span class='mono'>{_or_dash(chain.anchor_key_id)}</span>"
            )
            if chain.anchor_witness:
                anchor += f", published to {_e(chain.anchor_witness)}"
            items.append(anchor + ".")
            unanchored = chain.unanchored
            if unanchored:
                items.append(
                    f"{unanchored} records after #{chain.anchored_seq} are not yet anchored"
                    + (
                        f" ({records.unanchored} of them belong to this rollout)"
                        if records.unanchored
                        else ""
                    )
                    + ": they verify against the database only."
                )
        else:
            items.append(
                "No signed checkpoint anchors this chain outside the database: the records "
                "are consistent with one another, which a database superuser could also "
                "achieve by rewriting them."
            )
    else:
        items.append("The chain as a whole was not verified for this report.")
    if records.mismatched:
        listed = ", ".join(f"#{s}" for s in records.mismatched)
        items.append(f"Records whose stored hash is not SHA-256(prev_hash + body): {_e(listed)}.")
    else:
        items.append(
            f"Each of this rollout's {records.checked} records was hashed again for this "
            "report: every stored hash matches."
        )
    if records.broken_links:
        listed = ", ".join(f"#{s}" for s in records.broken_links)
        items.append(f"Records whose prev_hash is not the previous record's hash: {_e(listed)}.")
    body = "".join(f"<li>{i}</li>" for i in items)
    return (
        '<section id="verification"><h2>6. Hash-chain verification</h2>'
        f'<div class="box {status}"><p class="headline">{_e(headline)}</p><ul>{body}</ul></div>'
        "<p class='note'>Each record stores SHA-256(prev_hash ‖ canonical JSON body); anyone "
        "can recompute the hashes from an export with a standard SHA-256 tool.</p></section>"
    )


def _other(dossier: Dossier) -> str:
    parts = ['<section id="other"><h2>7. Other events</h2>']
    if not dossier.other:
        parts.append(
            "<p>None: every record of this rollout is shown in the sections above or in the "
            "record index.</p></section>"
        )
        return "".join(parts)
    rows = []
    for o in dossier.other:
        cells = [_seq(o.seq), _e(_t(o.at)), _e(o.action), _who(o.actor), _or_dash(o.note),
                 _or_dash(o.reason), f"<pre>{_e(o.evidence_json)}</pre>"]  # fmt: skip
        rows.append(_row(cells))
    parts.append(_table(["record", "time (UTC)", "action", "actor", "note", "reason", "evidence"],
                        rows))  # fmt: skip
    parts.append("</section>")
    return "".join(parts)


def _index(dossier: Dossier) -> str:
    rows = []
    for r in dossier.log:
        at = r.at.astimezone(UTC).isoformat(timespec="microseconds")
        version = r.body_version
        action = _e(r.action) + (f" {_note(f'(v{version})')}" if version not in (None, 3) else "")
        cells = [_seq(r.seq), _mono(at), action, _who(r.actor), _or_dash(r.reason),
                 _mono(r.record_hash)]  # fmt: skip
        rows.append(_row(cells))
    return (
        '<section id="records"><h2>Appendix: every record</h2>'
        "<p class='note'>Every audit record this report was made from, in chain order.</p>"
        + _table(["record", "time (UTC)", "action", "actor", "reason", "record hash"], rows)
        + "</section>"
    )


def render_html(dossier: Dossier) -> str:
    """The evidence report of ``dossier`` (:func:`canary.evidence.dossier.build_dossier`):
    one HTML document, self-contained (inline CSS and SVG; nothing is fetched), printable on
    A4. The same dossier always gives the same text."""
    s = dossier.summary
    where = f"{s.namespace}/{s.name}" if s.name else "unknown InferenceService"
    title = f"Rollout evidence: {where}, rollout {s.rollout_id}"
    sections = [
        _summary(dossier),
        _traffic(dossier),
        _steps(dossier),
        _approvals(dossier),
        _manual(dossier),
        _verification(dossier),
        _other(dossier),
        _index(dossier),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title, quote=True)}</title><style>{_STYLE}</style></head><body>"
        "<header><h1>Rollout evidence report</h1>"
        f'<p class="lead">{_e(where)}, rollout <span class="mono">{_e(s.rollout_id)}</span></p>'
        f'<p class="note">Made from the audit trail as of {_e(_tz(dossier.as_of))}. Times are '
        "UTC; #n is the number of a record in the audit chain.</p></header>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
