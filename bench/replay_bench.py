"""Replay speed: a 200,000-event log over 20,000 accounts, JSON in and out.

Prints, measured side by side in one run on the same file:
- `replay`: the real `costtrace replay` command, in a child process, with its
  peak memory (max RSS);
- `validate only`: decoding and validating each line, no model, no output;
- `json round trip`: msgspec decoding each line to a dict and encoding it
  back, the floor of any JSON-in/JSON-out tool in Python.
Ratios are what to quote: the machines are shared and noisy.

    python -m bench.replay_bench [--events N] [--accounts N] [--repeat K]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from costtrace.contract.events import parse_event
from costtrace.ops.sample import write_log


def _best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        out = Path(tmp) / "records.jsonl"
        write_log(str(events), args.events, args.accounts, seed=1)
        lines = events.read_bytes().splitlines()
        n = len(lines)

        def replay() -> None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "costtrace.cli",
                    "replay",
                    str(events),
                    "-o",
                    str(out),
                    "--no-progress",
                ],
                check=True,
                stderr=subprocess.DEVNULL,
            )

        # one command start-up, measured alone, is not replay work
        def startup() -> None:
            subprocess.run(
                [sys.executable, "-m", "costtrace.cli", "--help"], check=True, stdout=subprocess.DEVNULL
            )

        t_replay = _best(replay, args.repeat)
        t_start = _best(startup, args.repeat)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t_validate = _best(lambda: [parse_event(line) for line in lines], args.repeat)
        dec, enc = msgspec.json.Decoder(), msgspec.json.Encoder()
        json_lines = [line for line in lines if line.startswith(b"{") and line.endswith(b"}")]

        def round_trip() -> None:
            out_ = []
            for line in json_lines:
                with contextlib.suppress(msgspec.DecodeError):
                    out_.append(dec.decode(line))
            enc.encode_lines(out_)

        t_json = _best(round_trip, args.repeat)
        n_records = sum(1 for _ in out.open("rb"))
        size_mb = events.stat().st_size / 1e6

    work = t_replay - t_start
    print(f"log: {n} events over {args.accounts} accounts ({size_mb:.1f} MB), {n_records} records out")
    print(f"{'':22s}{'seconds':>10s}{'events/s':>14s}{'x replay':>10s}")
    for name, t in (
        ("replay (whole command)", t_replay),
        ("replay minus start-up", work),
        ("validate only", t_validate),
        ("json round trip", t_json),
    ):
        print(f"{name:22s}{t:10.3f}{n / t:14,.0f}{work / t:10.2f}")
    print(f"peak memory of replay (max RSS): {peak_kib / 1024:.0f} MiB")
    print("target: 150,000 events/s")


if __name__ == "__main__":
    main()
