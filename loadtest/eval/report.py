"""The evaluation's report as Markdown: personas, one row per actor and seed, precision and
recall per detector, and the acceptance lines met or not."""

from __future__ import annotations

from loadtest.eval.actors import Actor
from loadtest.eval.scoring import Accuracy, Line, Moment, Row


def personas(actors: list[Actor]) -> str:
    lines = ["| actor | ground truth | driven by | portal login | what it does |", "|---|---|---|---|---|"]
    for a in actors:
        truth = f"abusive: {', '.join(sorted(a.catch))}" if a.abusive else "compliant"
        lines.append(f"| {a.name} | {truth} | {a.driver} | {a.login} | {a.what} |")
    return "\n".join(lines)


def _when(moment: Moment | None) -> str:
    return "-" if moment is None else str(moment)


def actors(rows: list[Row]) -> str:
    lines = ["| seed | actor | truth | requests | statuses | flagged | challenged | blocked | signals |",
             "|---:|---|---|---:|---|---|---|---|---|"]
    for r in rows:
        statuses = " ".join(f"{status or 'err'}x{count}" for status, count in r.statuses.items())
        verdict = r.truth + (" **FP**" if not r.abusive and r.touched else "")
        verdict += " **missed**" if r.abusive and r.flagged is None else ""
        lines.append(f"| {r.seed} | {r.actor} | {verdict} | {r.requests} | {statuses} | {_when(r.flagged)} | "
                     f"{_when(r.challenged)} | {_when(r.blocked)} | {', '.join(r.signals) or '-'} |")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def accuracy(scores: list[Accuracy]) -> str:
    lines = ["| detector | flagged actors | of them abusive | labelled for it | caught | precision | recall |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(f"| {s.detector} | {s.flagged} | {s.true_positives} | {s.labelled} | {s.caught} | "
                     f"{_ratio(s.precision)} | {_ratio(s.recall)} |")
    return "\n".join(lines)


def acceptance(lines: list[Line]) -> str:
    out = []
    for line in lines:
        out.append(f"- {'met' if line.met else 'NOT MET'}: {line.text}")
        out.extend(f"    - {failing}" for failing in line.failing)
    return "\n".join(out)


def summary(rows: list[Row]) -> str:
    """One row per actor over every seed: in how many runs it was flagged or stopped, and why."""
    seeds = sorted({r.seed for r in rows})
    by_actor: dict[str, list[Row]] = {}
    for r in rows:
        by_actor.setdefault(r.actor, []).append(r)
    lines = [f"| actor | truth | requests ({'/'.join(map(str, seeds))}) | flagged | first flagged | "
             "challenged or blocked | signals | verdict |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in by_actor.items():
        first = runs[0]
        flagged = [r for r in runs if r.flagged]
        stopped = [r for r in runs if r.challenged or r.blocked]
        earliest = min((r.flagged for r in runs if r.flagged), key=lambda m: m.seconds, default=None)
        stop = min((m for r in runs for m in (r.challenged, r.blocked) if m), key=lambda m: m.seconds, default=None)
        if first.abusive:
            verdict = "caught" if len(flagged) == len(runs) else ("missed" if not flagged else "sometimes missed")
        else:
            verdict = "ok" if not any(r.touched for r in runs) else "**false positive**"
        signals = sorted({s for r in runs for s in r.signals})
        lines.append(f"| {name} | {first.truth} | {'/'.join(str(r.requests) for r in runs)} | "
                     f"{len(flagged)}/{len(runs)} | {_when(earliest)} | "
                     f"{f'{len(stopped)}/{len(runs)}, {stop}' if stop else '-'} | {', '.join(signals) or '-'} | "
                     f"{verdict} |")
    return "\n".join(lines)
