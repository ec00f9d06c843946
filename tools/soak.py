#!/usr/bin/env python3
"""Soak test: run ``edgedet run`` for N minutes and sample its memory, threads and open files.

Every ``--interval`` seconds it reads ``/proc/PID/status`` (VmRSS, Threads) and counts
``/proc/PID/fd`` of the edgedet process, and the RSS of its child processes (an ``ffmpeg``
encoder, for instance), then prints the curve and a summary: RSS growth after the warm-up (median
of the last three samples minus median of the first three), the peak, thread and fd ranges.
The run gets SIGINT at the end and must exit 0. Exit status: 0 when the growth after the warm-up is
below ``--max-growth`` MiB and threads and fds are flat, 1 otherwise, 2 when edgedet failed.

Examples::

    tools/soak.py --minutes 30                      # default: the pedestrians video, --loop, record + events
    tools/soak.py --minutes 10 --json soak.json -- --source rtsp://cam/stream --record rec.mp4

Arguments after ``--`` replace the default ``edgedet run`` arguments (``--headless`` is always added).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("EDGEDET_ASSETS", ROOT.parent / "shared" / "assets"))


@dataclass
class Sample:
    t_s: float
    rss_mib: float  # the edgedet process
    anon_mib: float  # of which anonymous memory (heaps, buffers; the rest is mapped files: code, the model)
    children_rss_mib: float  # its child processes (encoder), summed
    threads: int
    fds: int
    children: int


def _status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _rss_mib(status: dict, key: str = "VmRSS") -> float:
    return int(status.get(key, "0 kB").split()[0]) / 1024.0


def sample(pid: int, t0: float) -> Sample:
    st = _status(pid)
    kids = _children(pid)
    kid_rss = 0.0
    for kid in kids:
        try:
            kid_rss += _rss_mib(_status(kid))
        except OSError:
            pass
    return Sample(round(time.monotonic() - t0, 1), round(_rss_mib(st), 2), round(_rss_mib(st, "RssAnon"), 2),
                  round(kid_rss, 2), int(st.get("Threads", 0)), len(os.listdir(f"/proc/{pid}/fd")), len(kids))


def default_args(workdir: Path) -> list[str]:
    video = ASSETS / "videos" / "pedestrians_480x360.avi"
    return ["--source", str(video), "--loop", "--record", str(workdir / "soak.mp4"), "--record-segment", "60",
            "--record-keep", "50MB", "--events", str(workdir / "soak.jsonl")]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(samples: list[Sample], warmup_s: float) -> dict:
    """Growth = median of the last 3 samples - median of the first 3 after the warm-up (a trend, not
    one transient peak); the peak above that start is reported beside it."""
    after = [s for s in samples if s.t_s >= warmup_s] or samples[-1:]
    start = _median([s.rss_mib for s in after[:3]])
    kids_start = _median([s.children_rss_mib for s in after[:3]])
    return {
        "samples": len(samples),
        "rss_first_mib": samples[0].rss_mib,
        "rss_after_warmup_mib": round(start, 2),
        "rss_end_mib": samples[-1].rss_mib,
        "growth_after_warmup_mib": round(_median([s.rss_mib for s in after[-3:]]) - start, 2),
        "peak_above_warmup_mib": round(max(s.rss_mib for s in after) - start, 2),
        "anon_growth_after_warmup_mib": round(_median([s.anon_mib for s in after[-3:]])
                                              - _median([s.anon_mib for s in after[:3]]), 2),
        "children_growth_after_warmup_mib": round(_median([s.children_rss_mib for s in after[-3:]]) - kids_start, 2),
        "threads": [min(s.threads for s in after), max(s.threads for s in after)],
        "fds": [min(s.fds for s in after), max(s.fds for s in after)],
    }


def run_soak(args: argparse.Namespace, run_args: list[str]) -> tuple[list[Sample], int, str]:
    env = dict(os.environ)
    env.setdefault("EDGEDET_MODEL_MIRROR", str(ASSETS / "models"))
    cmd = [sys.executable, "-m", "edgedet", "run", "--headless", *run_args]
    print("soak: " + " ".join(cmd), flush=True)
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=args.cwd)
    samples: list[Sample] = []
    t0 = time.monotonic()
    print(f"{'t_s':>7} {'rss_MiB':>8} {'anon_MiB':>8} {'child_MiB':>9} {'threads':>7} {'fds':>4}", flush=True)
    total = args.minutes * 60.0
    due = [args.first] + [k * args.interval for k in range(1, int(total // args.interval) + 1)
                          if k * args.interval > args.first]
    if not due or due[-1] < total:
        due.append(total)
    try:
        for at in due:
            while proc.poll() is None and time.monotonic() - t0 < at:
                time.sleep(min(1.0, max(0.01, at - (time.monotonic() - t0))))
            if proc.poll() is not None:
                break
            try:
                s = sample(proc.pid, t0)
            except OSError:
                break
            samples.append(s)
            print(f"{s.t_s:7.0f} {s.rss_mib:8.1f} {s.anon_mib:8.1f} {s.children_rss_mib:9.1f} {s.threads:7d} "
                  f"{s.fds:4d}", flush=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.seek(0)
    tail = err.read().decode(errors="replace").strip().splitlines()[-8:]
    return samples, rc, "\n".join(tail)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1:] if "--" in argv else None
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--first", type=float, default=5.0, help="seconds before the first sample")
    p.add_argument("--warmup", type=float, default=60.0, help="growth is measured from the first sample after this")
    p.add_argument("--max-growth", type=float, default=5.0, help="MiB allowed after the warm-up")
    p.add_argument("--json", help="write the samples and the summary here")
    p.add_argument("--cwd", default=str(ROOT), help="working directory of edgedet (selects the code that runs)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgedet-soak-") as tmp:
        samples, rc, tail = run_soak(args, run_args if run_args is not None else default_args(Path(tmp)))
    if rc != 0 or not samples:
        print(f"soak: edgedet exited {rc}\n{tail}", file=sys.stderr)
        return 2
    summary = summarize(samples, args.warmup)
    print("soak: " + json.dumps(summary), flush=True)
    print(f"soak: last lines of edgedet:\n{tail}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": [asdict(s) for s in samples], "summary": summary},
                                              indent=2) + "\n")
    flat = summary["threads"][0] == summary["threads"][1] and summary["fds"][0] == summary["fds"][1]
    grown = max(summary["growth_after_warmup_mib"], summary["children_growth_after_warmup_mib"])
    return 0 if grown < args.max_growth and flat else 1


if __name__ == "__main__":
    sys.exit(main())
