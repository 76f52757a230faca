"""Ground truth against outcome: per actor what the gateway found and did, precision and recall
per detector, and the acceptance lines of the detection issue, met or not."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from loadtest.eval.actors import DETECTORS, Actor

PORTAL_PAGE_LIMIT = 20  # portal scrapers challenged or blocked within this many pages
SHARING_DEADLINE = 60.0  # a shared login flagged within this many seconds of the second person


@dataclass(frozen=True)
class Moment:
    request: int  # the actor's request number (1-based) by then
    seconds: float  # since the actor's first request

    def __str__(self) -> str:
        return f"#{self.request} @{self.seconds:.0f}s"


@dataclass(frozen=True)
class Row:
    seed: int
    actor: str
    abusive: bool
    catch: tuple[str, ...]
    driver: str
    login: str
    requests: int
    pages: int
    statuses: dict[int, int]
    flagged: Moment | None
    challenged: Moment | None
    blocked: Moment | None
    detectors: tuple[str, ...]
    signals: tuple[str, ...]
    pages_before_stopped: int | None  # portal pages by the first challenge or block (seen or decided)
    sharing_after_second: float | None  # seconds from the second person's first request to a sharing finding
    second_person: bool
    portal_scraper: bool

    @property
    def truth(self) -> str:
        return f"abusive ({', '.join(self.catch)})" if self.abusive else "compliant"

    @property
    def touched(self) -> bool:
        """Flagged, challenged or blocked: what a compliant actor must never be."""
        return bool(self.flagged or self.challenged or self.blocked)


def _is_page(path: str) -> bool:
    return path.startswith("/portal") and not path.startswith("/portal/static/") and path != "/favicon.ico"


def score(seed: int, actor: Actor, findings: list[dict[str, Any]]) -> Row:
    sent = sorted(actor.log.sent, key=lambda s: s.at)
    start = sent[0].at if sent else 0.0
    mine = sorted((f for f in findings if f["subject"] in actor.subjects
                   or "network:" + str(f.get("evidence", {}).get("network")) in actor.subjects),
                  key=lambda f: f["at"])

    def moment(at: float) -> Moment:
        return Moment(sum(1 for s in sent if s.at <= at + 1e-6), max(0.0, at - start))

    def first(outcomes: set[str]) -> tuple[Moment | None, int | None]:
        pages = 0
        for n, s in enumerate(sent, 1):
            pages += _is_page(s.path)
            if s.outcome in outcomes:
                return Moment(n, s.at - start), pages
        return None, None

    challenged, pages_challenged = first({"challenged"})
    blocked, pages_blocked = first({"blocked", "reauth"})
    # A block or challenge the gateway decided counts from the page that tipped it, even when
    # the actor sent no further page to meet it.
    sanctioned = next((f["at"] for f in mine if f["action"] in ("block", "challenge") and not f["shadow"]), None)
    pages_sanctioned = (None if sanctioned is None
                        else sum(_is_page(s.path) for s in sent if s.at <= sanctioned + 1e-6))
    stops = [p for p in (pages_challenged, pages_blocked, pages_sanctioned) if p is not None]
    sharing_at = next((f["at"] for f in mine if f["detector"] == "sharing"
                       and (actor.second_person_at is None or f["at"] >= actor.second_person_at - 1)), None)
    return Row(
        seed=seed, actor=actor.name, abusive=actor.abusive, catch=tuple(sorted(actor.catch)), driver=actor.driver,
        login=actor.login, requests=len(sent), pages=sum(_is_page(s.path) for s in sent),
        statuses=dict(sorted(Counter(s.status for s in sent).items())),
        flagged=moment(mine[0]["at"]) if mine else None, challenged=challenged, blocked=blocked,
        detectors=tuple(sorted({f["detector"] for f in mine})),
        signals=tuple(sorted({f"{f['detector']}:{signal}" for f in mine for signal in f["signals"]})),
        pages_before_stopped=min(stops) if stops else None,
        sharing_after_second=(None if sharing_at is None or actor.second_person_at is None
                              else sharing_at - actor.second_person_at),
        second_person=actor.second_person_at is not None,
        portal_scraper=actor.portal_scraper,
    )


@dataclass(frozen=True)
class Accuracy:
    detector: str
    true_positives: int  # flagged actors that are abusive
    flagged: int
    labelled: int  # actors labelled for this detector
    caught: int  # of those, flagged by it

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.caught / self.labelled if self.labelled else None


def accuracy(rows: list[Row]) -> list[Accuracy]:
    """Per detector, over actor-runs: precision = flagged actors that are abusive; recall = actors
    labelled for this detector that it flagged (a finding by another detector does not count)."""
    made = []
    for detector in DETECTORS:
        flagged = [r for r in rows if detector in r.detectors]
        labelled = [r for r in rows if detector in r.catch]
        made.append(Accuracy(detector, sum(r.abusive for r in flagged), len(flagged), len(labelled),
                             sum(detector in r.detectors for r in labelled)))
    return made


@dataclass(frozen=True)
class Line:
    text: str
    met: bool
    failing: tuple[str, ...]  # "actor (seed N): why"


def acceptance(rows: list[Row]) -> list[Line]:
    def why(r: Row) -> str:
        return f"{r.actor} (seed {r.seed})"

    compliant_hit = [f"{why(r)}: {', '.join(r.signals) or 'refused'}"
                     + (f", blocked {r.blocked}" if r.blocked else "") for r in rows if not r.abusive and r.touched]
    missed = [why(r) for r in rows if r.abusive and r.flagged is None]
    scrapers = [f"{why(r)}: " + (f"stopped after {r.pages_before_stopped} pages" if r.pages_before_stopped
                                  else f"not challenged or blocked in its {r.pages} pages")
                for r in rows if r.portal_scraper
                and (r.pages_before_stopped is None or r.pages_before_stopped > PORTAL_PAGE_LIMIT)]
    shared = [f"{why(r)}: " + ("no sharing finding" if r.sharing_after_second is None
                               else f"flagged {r.sharing_after_second:.0f} s after the second person")
              for r in rows if "sharing" in r.catch and r.second_person
              and (r.sharing_after_second is None or r.sharing_after_second > SHARING_DEADLINE)]
    return [
        Line("0 compliant actors flagged, challenged or blocked", not compliant_hit, tuple(compliant_hit)),
        Line("every abusive actor flagged", not missed, tuple(missed)),
        Line(f"portal scrapers challenged or blocked within {PORTAL_PAGE_LIMIT} pages", not scrapers,
             tuple(scrapers)),
        Line(f"a shared login flagged within {SHARING_DEADLINE:.0f} s of the second person's first request",
             not shared, tuple(shared)),
    ]


def row_from_json(data: dict[str, Any]) -> Row:
    """A row as `--json` wrote it."""
    moments = {key: None if data[key] is None else Moment(**data[key]) for key in ("flagged", "challenged", "blocked")}
    return Row(**{**data, **moments, "catch": tuple(data["catch"]), "detectors": tuple(data["detectors"]),
                  "signals": tuple(data["signals"]), "statuses": {int(k): v for k, v in data["statuses"].items()}})
