"""Results of a bench run: tables, goals, the Markdown section, the JSON and the plot."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], digits: int = 0) -> str:
    """'median (min–max)' of single runs, or just the value for one run."""
    if not values:
        return "-"
    med = f"{median(values):.{digits}f}"
    if len(values) == 1:
        return med
    return f"{med} ({min(values):.{digits}f}–{max(values):.{digits}f})"


@dataclass
class Bar:
    """One bar of the plot: `series` (who) in `group` (which case), a median value."""

    group: str
    series: str
    value: float


@dataclass
class Goal:
    """A goal of the project, what this run measured for it and whether it is met."""

    text: str
    measured: str
    met: bool | None


@dataclass
class Table:
    """The result of one scenario."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    unit: str = "MB/s"
    goals: list[Goal] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "---|" * len(self.headers))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += self.notes
        return "\n".join(lines)


@dataclass
class Report:
    """Everything one run produced."""

    command: str
    started: str
    header: list[str]
    tables: list[Table] = field(default_factory=list)

    @property
    def goals(self) -> list[Goal]:
        return [g for t in self.tables for g in t.goals]

    def markdown(self) -> str:
        parts = [f"Command: `{self.command}` (started {self.started}).", ""]
        parts += self.header
        for table in self.tables:
            parts += ["", table.markdown()]
        if self.goals:
            parts += ["", "### Goals", "", "| goal | measured | met |", "|---|---|---|"]
            for g in self.goals:
                met = "-" if g.met is None else ("yes" if g.met else "**no**")
                parts.append(f"| {g.text} | {g.measured} | {met} |")
        return "\n".join(parts)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def write_section(doc: Path, body: str, name: str = "bench") -> None:
    """Replace the text between the `name` markers of `doc` (appending them if missing)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def plot(report: Report, path: Path) -> None:
    """One panel per scenario: grouped horizontal bars of the medians, legends outside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [t for t in report.tables if t.bars]
    if not tables:
        return
    heights = [max(1.6, 0.3 * len(t.bars) + 0.9) for t in tables]
    fig, axes = plt.subplots(len(tables), 1, figsize=(11, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, table in zip(axes[:, 0], tables, strict=True):
        groups = list(dict.fromkeys(b.group for b in table.bars))
        series = list(dict.fromkeys(b.series for b in table.bars))
        width = 0.8 / len(series)
        top = max(b.value for b in table.bars)
        fmt = "%.2f" if top < 10 else "%.0f"
        for si, name in enumerate(series):
            ys, xs = [], []
            for gi, group in enumerate(groups):
                for b in table.bars:
                    if b.group == group and b.series == name:
                        ys.append(gi + (si - (len(series) - 1) / 2) * width)
                        xs.append(b.value)
            bars = ax.barh(ys, xs, height=width * 0.95, label=name)
            ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
        ax.set_yticks(range(len(groups)), groups, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(table.title.replace("`", ""), fontsize=9, loc="left")
        ax.set_xlabel(table.unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.12)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(f"tools/bench, {report.started} (medians)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.99))
    fig.savefig(path, dpi=100)
    plt.close(fig)
