"""Results out: one JSON line per run, markdown tables, the livepost/baseline ratios and a
PNG of latency percentiles and delivered events/s against subscriber count."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Result = dict[str, Any]

# (column title, result key, format) per scenario.
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "fanout": [
        ("target", "target", "{}"),
        ("workers", "workers", "{}"),
        ("subs", "subs", "{}"),
        ("posts/s", "rate", "{:g}"),
        ("posts", "posts", "{}"),
        ("delivered/s", "events_per_s", "{:,.0f}"),
        ("p50 ms", "p50_ms", "{:.1f}"),
        ("p95 ms", "p95_ms", "{:.1f}"),
        ("p99 ms", "p99_ms", "{:.1f}"),
        ("max ms", "max_ms", "{:.1f}"),
        ("lost", "lost", "{}"),
        ("dup", "duplicates", "{}"),
        ("server µs/event", "cpu_us_per_event", "{:.1f}"),
        ("RSS MB", "rss_kb", "{:.0f}"),
        ("client CPU s", "client_cpu_s", "{:.1f}"),
    ],
    "rpc": [
        ("target", "target", "{}"),
        ("workers", "workers", "{}"),
        ("op", "op", "{}"),
        ("clients", "clients", "{}"),
        ("requests/s", "requests_per_s", "{:,.1f}"),
        ("p50 ms", "p50_ms", "{:.1f}"),
        ("p95 ms", "p95_ms", "{:.1f}"),
        ("p99 ms", "p99_ms", "{:.1f}"),
        ("server µs/request", "cpu_us_per_request", "{:,.0f}"),
        ("errors", "errors", "{}"),
    ],
    "conns": [
        ("target", "target", "{}"),
        ("workers", "workers", "{}"),
        ("conns", "subscribed", "{}"),
        ("RSS before MB", "rss_kb_before", "{:.0f}"),
        ("RSS after MB", "rss_kb_after", "{:.0f}"),
        ("kB/conn", "kb_per_conn", "{:.1f}"),
        ("errors", "errors", "{}"),
    ],
}
_MEGABYTES = {"rss_kb", "rss_kb_before", "rss_kb_after"}

# The metrics compared in --compare: (key, title, higher is better).
RATIOS: dict[str, list[tuple[str, str, bool]]] = {
    "fanout": [
        ("events_per_s", "delivered/s", True),
        ("p99_ms", "p99", False),
        ("cpu_us_per_event", "server CPU/event", False),
    ],
    "rpc": [("requests_per_s", "requests/s", True), ("p50_ms", "p50", False)],
    "conns": [("kb_per_conn", "kB/conn", False)],
}


# The bar for a fan-out rate to count as sustained.
SUSTAINED_P99_MS = 100.0


def json_line(result: Result) -> str:
    return json.dumps(result, sort_keys=False, separators=(", ", ": "))


def _cell(result: Result, key: str, form: str) -> str:
    value = result.get(key)
    if value is None:
        return "-"
    if key == "errors":
        return str(sum(value.values())) if value else "0"
    if key in _MEGABYTES:
        value = value / 1024
    return form.format(value)


def point(result: Result) -> tuple[Any, ...]:
    """What identifies a scenario point, whatever the target: the comparison key."""
    scenario = result["scenario"]
    if scenario == "fanout":
        return (scenario, result["subs"], result["rate"], result["duration"], result["tags"])
    if scenario == "rpc":
        return (scenario, result["op"], result["clients"], result["duration"])
    return (scenario, result["conns"])


def markdown(results: list[Result]) -> str:
    sections = []
    for scenario, columns in COLUMNS.items():
        rows = [result for result in results if result["scenario"] == scenario]
        if not rows:
            continue
        lines = [
            f"### {scenario}",
            "",
            "| " + " | ".join(title for title, _, _ in columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        for row in rows:
            cells = [_cell(row, key, form) for _, key, form in columns]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def ratios(results: list[Result], ours: str, baseline: str) -> str:
    """ours ÷ baseline per scenario point and metric, each the median over the rounds."""
    grouped: dict[tuple[Any, ...], dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        grouped[point(result)][result["target"]].append(result)
    lines = [
        f"### {ours} ÷ {baseline} (median of rounds)",
        "",
        "| point | metric | " + ours + " | " + baseline + " | ratio |",
        "|---|---|---|---|---|",
    ]
    for key, by_target in grouped.items():
        if ours not in by_target or baseline not in by_target:
            continue
        for metric, title, _higher in RATIOS[key[0]]:
            mine = _median(by_target[ours], metric)
            theirs = _median(by_target[baseline], metric)
            label = _label(key)
            lines.append(
                f"| {label} | {title} | {_fmt(mine)} | {_fmt(theirs)} | {_ratio(mine, theirs)} |"
            )
    mine, theirs = sustained(results, ours), sustained(results, baseline)
    if mine is not None or theirs is not None:
        lines.append(
            f"| highest fan-out rate with 0 lost and p99 ≤ {SUSTAINED_P99_MS:g} ms | delivered/s"
            f" | {_fmt(mine)} | {_fmt(theirs)} | {_ratio(mine, theirs)} |"
        )
    if baseline == "raw":
        lines.append(
            "\nThe raw relay stores nothing and answers `list` with an empty list: its rpc"
            " numbers are the transport's floor, not a like-for-like comparison."
        )
    return "\n".join(lines)


def sustained(results: list[Result], target: str) -> float | None:
    """The highest delivered events/s (median of rounds) among target's fan-out points where
    every round lost nothing and kept p99 within SUSTAINED_P99_MS."""
    rounds: dict[tuple[Any, ...], list[Result]] = defaultdict(list)
    for result in results:
        if result["scenario"] == "fanout" and result["target"] == target:
            rounds[point(result)].append(result)
    rates = [
        _median(runs, "events_per_s")
        for runs in rounds.values()
        if all(
            run.get("lost") == 0
            and run.get("p99_ms") is not None
            and run["p99_ms"] <= SUSTAINED_P99_MS
            for run in runs
        )
    ]
    return max((rate for rate in rates if rate is not None), default=None)


def _label(key: tuple[Any, ...]) -> str:
    if key[0] == "fanout":
        return f"fanout {key[1]} subs x {key[2]:g}/s, {key[4]} tag(s)"
    if key[0] == "rpc":
        return f"rpc {key[1]}, {key[2]} clients"
    return f"conns {key[1]}"


def _median(results: list[Result], metric: str) -> float | None:
    values = [result[metric] for result in results if result.get(metric) is not None]
    return statistics.median(values) if values else None


def _ratio(mine: float | None, theirs: float | None) -> str:
    return f"{mine / theirs:.2f}x" if mine is not None and theirs else "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def plot(results: list[Result], path: Path) -> Path | None:
    """Latency percentiles and delivered events/s, one colour per target: against subscribers
    when every point has the same posts/s, else against the offered events/s (subscribers x
    posts/s), where a rate sweep shows each side's saturation. None without fan-out results."""
    fanouts = [result for result in results if result["scenario"] == "fanout"]
    if not fanouts:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    by_subscribers = len({result["rate"] for result in fanouts}) == 1

    def x_of(result: Result) -> float:
        return float(result["subs"] if by_subscribers else result["subs"] * result["rate"])

    # Several rounds of a point are drawn as their median.
    series: dict[str, dict[float, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for result in fanouts:
        series[result["target"]][x_of(result)].append(result)
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (target, points) in enumerate(sorted(series.items())):
        xs = sorted(points)
        colour = colours[number % len(colours)]
        for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
            values = [_median(points[x], key) for x in xs]
            latency.plot(xs, values, style, color=colour, marker="o", label=f"{target} {key[:3]}")
        delivered = [_median(points[x], "events_per_s") for x in xs]
        throughput.plot(xs, delivered, color=colour, marker="o", label=target)
    x_label = "subscribers" if by_subscribers else "offered events/s (subscribers x posts/s)"
    if not by_subscribers:
        offered = sorted({x for points in series.values() for x in points})
        throughput.plot(offered, offered, ":", color="grey", label="offered")
    latency.set(xlabel=x_label, ylabel="create → event latency (ms)", yscale="log")
    latency.set_title("latency percentiles (median of rounds)")
    throughput.set(xlabel=x_label, ylabel="delivered events/s")
    throughput.set_title("delivered events/s")
    for axes in (latency, throughput):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
