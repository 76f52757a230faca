"""The labelled detection evaluation (`make detection-eval`; docs/detection.md).

    python bench/detection_eval.py [--seeds 1,2,3 | --seed N] [--seconds 75] [--actors a,b]
                                   [--portal-login cookie|header] [--session-cookie NAME]

For each seed it starts the demo upstream and `fairgate run` on config/gateway.yaml (only the
listen ports and the upstream URL changed), runs every compliant and abusive actor at once over
loopback from its own 127.20-29.x.y addresses, then reads /admin/findings and prints a table per
actor, precision and recall per detector and the acceptance lines of issue 13.

Exit status: 0 when every acceptance line holds for every seed, 1 when one does not, 2 when the
harness itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.eval import report  # noqa: E402
from loadtest.eval.gateway_run import CONFIG, HarnessError  # noqa: E402
from loadtest.eval.runner import evaluate, pick  # noqa: E402
from loadtest.eval.scoring import acceptance, accuracy, row_from_json  # noqa: E402

PORTS = range(50000, 51000)


def _session_cookie_name(config: Path) -> str | None:
    """The login cookie the evaluated config reads on portal routes, as the vendor's login sets it."""
    auth = (yaml.safe_load(config.read_text()) or {}).get("auth") or {}
    name = (auth.get("session_cookie") or {}).get("name")
    return name if isinstance(name, str) else None


def _seeds(raw: str) -> list[int]:
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas: {raw!r}") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="one seed (default: --seeds)")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="seeds, e.g. 1,2,3 (default)")
    parser.add_argument("--seconds", type=float, default=75.0, help="real seconds each seed's actors run")
    parser.add_argument("--actors", help="only these actors, comma-separated")
    parser.add_argument("--portal-login", choices=("header", "cookie"), default="cookie",
                        help="how logged-in browser personas carry their login on portal pages: cookie (as "
                             "browsers do, the default) or header (Authorization on page loads only; Chromium "
                             "personas then stay anonymous)")
    parser.add_argument("--session-cookie", help="cookie name for --portal-login cookie (default: the config's "
                                                 "auth.session_cookie.name)")
    parser.add_argument("--json", type=Path, help="also write the rows and verdicts here (JSON)")
    parser.add_argument("--rerender", type=Path, metavar="JSON", help="print the report of an earlier --json run")
    parser.add_argument("--ports", default="50000-50999", help="ports for the gateway and upstream (LOW-HIGH)")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else args.seeds
    low, _, high = args.ports.partition("-")
    ports = range(int(low), int(high) + 1)
    names = [n.strip() for n in args.actors.split(",")] if args.actors else None
    session_cookie = args.session_cookie or _session_cookie_name(CONFIG)
    if args.portal_login == "cookie" and session_cookie is None:
        print(f"detection-eval: {CONFIG} sets no auth.session_cookie.name; give --session-cookie", file=sys.stderr)
        return 2
    try:
        actors = pick(names, args.portal_login)
        rows = []
        if args.rerender:
            rows = [row_from_json(row) for row in json.loads(args.rerender.read_text())["rows"]]
            seeds = sorted({row.seed for row in rows})
        for seed in [] if args.rerender else seeds:
            began = time.monotonic()
            rows += asyncio.run(evaluate(seed, args.seconds, names, args.portal_login, session_cookie or "",
                                         ports=ports))
            print(f"seed {seed}: {time.monotonic() - began:.0f} s", file=sys.stderr)
    except HarnessError as error:
        print(f"detection-eval: {error}", file=sys.stderr)
        return 2
    lines = acceptance(rows)
    scores = accuracy(rows)
    print(f"## Personas\n\n{report.personas(actors)}\n")
    print(f"## Summary per actor\n\n{report.summary(rows)}\n")
    print(f"## Actors (seeds {', '.join(map(str, seeds))}, {args.seconds:.0f} s each)\n\n{report.actors(rows)}\n")
    print(f"## Precision and recall per detector\n\n{report.accuracy(scores)}\n")
    print(f"## Acceptance (issue 13)\n\n{report.acceptance(lines)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                         "accuracy": [asdict(s) for s in scores],
                                         "acceptance": [asdict(line) for line in lines]}, indent=1, default=str))
    return 0 if all(line.met for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
