"""``python -m bench [--quick] [--only NAME] [--json PATH]``: run the benchmarks (issues 5,
15 and 17) on the real RabbitMQ and Redis and the local simulator, and print one table.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import capacity, fairness, outputs, polling, ratelimit, throughput
from bench.harness import LOG_ROOT, check_services, log
from bench.report import ScenarioResult, render, write_json

Scenario = Callable[[bool, Path], ScenarioResult]

#: In the order they run.
SCENARIOS: dict[str, Scenario] = {
    polling.NAME: polling.run,
    ratelimit.NAME: ratelimit.run,
    capacity.NAME: capacity.run,
    throughput.NAME: throughput.run,
    fairness.NAME: fairness.run,
    outputs.NAME: outputs.run,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmarks of issue 5 (rate budget and polling efficiency), each scenario "
            "against a baseline measured in the same run."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: every scenario in ~3 minutes"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these scenarios (repeat or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args(argv)
    names = [name.strip() for value in args.only for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.names = names or list(SCENARIOS)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM cleans up like Ctrl-C: workers stopped, queues and Redis keys deleted.
    signal.signal(signal.SIGTERM, _interrupt)
    command = shlex.join([Path(sys.executable).as_posix(), "-m", "bench", *argv])
    problems = check_services()
    if problems:
        for problem in problems:
            print(f"error: {problem}; run `make services`", file=sys.stderr)
        return 2
    log_dir = LOG_ROOT / time.strftime("%Y%m%d-%H%M%S")
    log(f"worker logs in {log_dir}")
    started = time.monotonic()
    results: list[ScenarioResult] = []
    for name in args.names:
        log(f"scenario {name}{' (quick)' if args.quick else ''}")
        began = time.monotonic()
        try:
            result = SCENARIOS[name](args.quick, log_dir)
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        except Exception as exc:
            traceback.print_exc()
            result = ScenarioResult(name, "", "", "", error=f"{type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - began
        log(f"scenario {name} done in {result.seconds:.0f} s")
        results.append(result)
    total_s = time.monotonic() - started
    render(results, command, total_s)
    if args.json is not None:
        write_json(args.json, results, command, total_s)
    failed = any(result.error for result in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
