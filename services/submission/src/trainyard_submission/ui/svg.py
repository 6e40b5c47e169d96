"""Small pictures drawn on the server as SVG: a pipeline run's DAG and line charts (a sweep's
objective over its trials, a queue's depth and wait over the last hours).

Pure functions from data to markup: no script, no inline style (the pages' CSP has neither),
colours from classes in ui.css so that dark mode follows the system. Every text is escaped: step
names, parameters and metric names come from users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlencode

from markupsafe import Markup

from trainyard_contracts.runs import TERMINAL_STEP_STATES, PipelineRun
from trainyard_contracts.workflow import RUN_LABEL, STEP_LABEL  # a step's jobs' labels
from trainyard_submission.ui.queuestats import Sample

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 190, 58, 56, 18, 10


@dataclass(frozen=True)
class DagStep:
    """One box of the picture: where it is, what it says, where it links."""

    name: str
    state: str
    depends: dict[str, str]  # the step it needs -> the condition (succeeded, failed, finished)
    column: int
    row: int
    detail: str
    href: str | None


def step_columns(depends: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Each step's column: the longest chain of dependencies before it (0 for a root)."""
    columns: dict[str, int] = {}

    def column(name: str, seen: frozenset[str]) -> int:
        if name not in columns:
            before = [d for d in depends.get(name, ()) if d in depends and d not in seen]
            columns[name] = 1 + max((column(d, seen | {name}) for d in before), default=-1)
        return columns[name]

    for name in depends:
        column(name, frozenset())
    return columns


def dag_steps(run: PipelineRun) -> list[DagStep]:
    """The run's steps laid out: columns by dependency depth, rows in the pipeline's order."""
    depends: dict[str, dict[str, str]] = {
        s.name: {d: str(c) for d, c in s.depends.items()}
        if isinstance(s.depends, dict)
        else dict.fromkeys(s.depends, "succeeded")
        for s in run.spec.steps
    }
    columns = step_columns({name: tuple(needs) for name, needs in depends.items()})
    counts = run.job_counts()
    rows: dict[int, int] = {}
    out = []
    for spec in run.spec.steps:
        step = run.steps[spec.name]
        col = columns[spec.name]
        row = rows.get(col, 0)
        rows[col] = row + 1
        job_ids = [j.job_id for _, j in sorted(step.jobs.items()) if j.job_id]
        if spec.array:
            c = counts[spec.name]
            total = sum(c.values())
            failed = c["failed"] + c["timed_out"] + c["cancelled"] + c["rejected"]
            detail = f"{c['succeeded']} done · {failed} failed · {total} total"
        else:
            kind = "sweep" if spec.sweep is not None else "job"  # a sweep step's "job" is its sweep
            detail = (
                f"{kind} {job_ids[0]}"
                if job_ids
                else (f"no {kind}" if step.state in TERMINAL_STEP_STATES else f"no {kind} yet")
            )
        page = "sweeps" if spec.sweep is not None else "jobs"
        href = f"/ui/{page}/{job_ids[0]}" if len(job_ids) == 1 and not spec.array else None
        if spec.array and job_ids:  # the array's jobs: the jobs table, filtered by their labels
            labels = f"{RUN_LABEL}={run.run_id} {STEP_LABEL}={spec.name}"
            href = "/ui/jobs?" + urlencode({"label": labels})
        out.append(DagStep(spec.name, step.state.value, depends[spec.name], col, row, detail, href))
    return out


def dag_svg(run: PipelineRun) -> Markup:
    """The run's DAG: a box per step coloured by its state, an arrow per dependency."""
    steps = dag_steps(run)
    where = {s.name: (PAD + s.column * (BOX_W + GAP_X), PAD + s.row * (BOX_H + GAP_Y)) for s in steps}
    width = max(x for x, _ in where.values()) + BOX_W + PAD if steps else 2 * PAD
    height = max(y for _, y in where.values()) + BOX_H + PAD if steps else 2 * PAD
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="steps and their dependencies">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>',
    ]
    for s in steps:
        x2, y2 = where[s.name]
        for dep, condition in s.depends.items():
            if dep not in where:
                continue
            x1, y1 = where[dep]
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            mid = (sx + ex) / 2
            # an edge other than "when it succeeded" is dashed and says its condition
            parts.append(
                f'<path class="edge edge-{escape(condition)}" d="M {sx} {sy} C {mid} {sy}, {mid} {ey}, '
                f'{ex - 2} {ey}" marker-end="url(#arrow)"><title>{escape(s.name)} needs {escape(dep)} '
                f"{escape(condition)}</title></path>"
            )
            if condition != "succeeded":
                parts.append(
                    f'<text class="condition" x="{mid}" y="{(sy + ey) / 2 - 4}" text-anchor="middle">'
                    f"{escape(condition)}</text>"
                )
    for s in steps:
        x, y = where[s.name]
        box = (
            f'<g class="step step-{escape(s.state)}" data-step="{escape(s.name)}" '
            f'data-state="{escape(s.state)}">'
            f"<title>{escape(s.name)}: {escape(s.state)}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/>'
            f'<text x="{x + 10}" y="{y + 19}" class="name">{escape(clip(s.name, 24))}</text>'
            f'<text x="{x + 10}" y="{y + 35}" class="state">{escape(s.state)}</text>'
            f'<text x="{x + 10}" y="{y + 50}" class="detail">{escape(clip(s.detail, 30))}</text></g>'
        )
        parts.append(f'<a href="{escape(s.href)}">{box}</a>' if s.href else box)
    parts.append("</svg>")
    return Markup("".join(parts))


def clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


@dataclass(frozen=True)
class Series:
    """A line of a chart: its name (the legend), its css class, its points (x, y)."""

    name: str
    css: str
    points: Sequence[tuple[float, float]]
    dots: bool = False


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: Sequence[Series]
    x_ticks: Sequence[tuple[float, str]] = field(default_factory=tuple)
    width: int = 640
    height: int = 220


def nice_ceiling(value: float) -> float:
    """The y axis's top: 1, 2 or 5 times a power of ten at or above ``value`` (1 for 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= value))


def line_chart(chart: Chart) -> Markup:
    """Lines (and dots) over a shared x axis, y from the data's low (or 0) to a round top."""
    left, right, top, bottom = 56, 12, 24, 34
    plot_w, plot_h = chart.width - left - right, chart.height - top - bottom
    points = [p for s in chart.series for p in s.points if math.isfinite(p[1])]
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0 = min(0.0, min(ys))
    y1 = nice_ceiling(max(ys) - y0) + y0 if max(ys) > y0 else y0 + 1

    def px(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * plot_w, 1)

    def py(y: float) -> float:
        return round(top + plot_h - (y - y0) / (y1 - y0) * plot_h, 1)

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {chart.width} {chart.height}" '
        f'role="img" aria-label="{escape(chart.title)}"><title>{escape(chart.title)}</title>',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>',
        f'<line class="grid" x1="{left}" y1="{top}" x2="{left + plot_w}" y2="{top}"/>',
        f'<text class="tick" x="{left - 6}" y="{top + 4}" text-anchor="end">{escape(short(y1))}</text>',
        f'<text class="tick" x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end">'
        f"{escape(short(y0))}</text>",
        f'<text class="label" x="{left}" y="{top - 8}">{escape(chart.y_label)}</text>',
        f'<text class="label" x="{left + plot_w}" y="{chart.height - 4}" text-anchor="end">'
        f"{escape(chart.x_label)}</text>",
    ]
    for x, label in chart.x_ticks:
        parts.append(
            f'<text class="tick" x="{px(x)}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    legend_x = left + 8
    for s in chart.series:
        shown = [(px(x), py(y)) for x, y in s.points if math.isfinite(y)]
        css = escape(s.css)
        if len(shown) > 1:
            line = " ".join(f"{x},{y}" for x, y in shown)
            parts.append(f'<polyline class="series {css}" points="{line}"/>')
        if s.dots or len(shown) == 1:
            parts.extend(f'<circle class="dot {css}" cx="{x}" cy="{y}" r="3.5"/>' for x, y in shown)
        parts.append(
            f'<rect class="key {css}" x="{legend_x}" y="{top + 4}" width="10" height="10"/>'
            f'<text class="tick" x="{legend_x + 14}" y="{top + 13}">{escape(s.name)}</text>'
        )
        legend_x += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return Markup("".join(parts))


def short(value: float) -> str:
    """An axis number: few digits."""
    return f"{value:.4g}"


def queue_charts(queue: str, samples: Sequence[Sample]) -> tuple[Markup, Markup]:
    """A queue's depth and its longest wait over the sampled hours (x: minutes before now)."""
    if not samples:
        return Markup(""), Markup("")
    end = samples[-1].at
    ago = [((s.at - end).total_seconds() / 60, s) for s in samples]
    span = -ago[0][0]
    ticks = [(-m, f"-{m:g} min" if m < 120 else f"-{m / 60:g} h") for m in tick_minutes(span)] + [
        (0.0, "now")
    ]
    depth = Chart(
        f"{queue}: jobs waiting",
        "time",
        "jobs waiting",
        [Series("waiting", "s-depth", [(x, float(s.pending)) for x, s in ago])],
        ticks,
        height=180,
    )
    wait = Chart(
        f"{queue}: longest wait",
        "time",
        "longest wait (min)",
        [Series("longest wait", "s-wait", [(x, s.longest_wait_seconds / 60) for x, s in ago])],
        ticks,
        height=180,
    )
    return line_chart(depth), line_chart(wait)


def tick_minutes(span: float) -> list[float]:
    """Two or three round marks (in minutes before now) within ``span`` minutes."""
    for step in (1, 5, 10, 15, 30, 60, 120, 240, 480, 960):
        if span / step <= 3:
            return [step * k for k in range(int(span // step), 0, -1)]
    return []
