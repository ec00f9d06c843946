"""How much of a recording survives a SIGKILL (a power cut, an OOM kill, a stop that timed out).

Runs ``edgedet run --loop --headless --record R --events E`` on an asset video, kills it with
SIGKILL once ``--after`` frames are in the events file, then asks ffprobe what plays: codec,
duration, frames decoded against frames written. ``--with-encoder`` (default) kills the encoder
process at the same time, as a power cut does; ``--edgedet-only`` kills edgedet alone (its ffmpeg
then finishes the file when its input ends).

    python tools/bench_sigkill.py --after 40 80 120 160 200
    python tools/bench_sigkill.py --after 80 --before ../old-release   # the same for another tree
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("EDGEDET_ASSETS", ROOT.parent / "shared" / "assets"))


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def probe(path: Path) -> dict:
    run = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_name,profile,nb_read_frames:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True)
    info = json.loads(run.stdout or "{}")
    stream = (info.get("streams") or [{}])[0]
    return {"codec": stream.get("codec_name"), "profile": stream.get("profile"),
            "frames_decoded": int(stream.get("nb_read_frames", 0) or 0),
            "duration_s": float((info.get("format") or {}).get("duration", 0) or 0),
            "ffprobe_error": (run.stderr.strip().splitlines() or [""])[-1]}


def kill_once(tree: Path, video: Path, after: int, workdir: Path, with_encoder: bool, fps: float) -> dict:
    rec, events = workdir / f"k{after}.mp4", workdir / f"k{after}.jsonl"
    for path in (rec, events):
        path.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("EDGEDET_MODEL_MIRROR", str(ASSETS / "models"))
    cmd = [sys.executable, "-m", "edgedet", "run", "--source", str(video), "--loop", "--headless",
           "--record", str(rec), "--events", str(events)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (not events.exists() or events.read_bytes().count(b"\n") < after):
        if proc.poll() is not None:
            raise SystemExit(f"edgedet ended before the kill (exit {proc.returncode}): {' '.join(cmd)}")
        time.sleep(0.02)
    targets = [proc.pid, *(children(proc.pid) if with_encoder else [])]
    for pid in targets:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    written = len(events.read_text().splitlines()) if events.exists() else 0
    row = {"kill_at": after, "frames_written": written, **probe(rec),
           "bytes": rec.stat().st_size if rec.exists() else 0}
    row["lost_s"] = round((written - row["frames_decoded"]) / fps, 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--after", type=int, nargs="+", default=[40, 80, 120, 160, 200],
                   help="kill once this many frames are in the events file (one run each)")
    p.add_argument("--video", default="pedestrians_480x360.avi", help="asset video name or path")
    p.add_argument("--fps", type=float, default=10.0, help="the video's frame rate (for lost seconds)")
    p.add_argument("--before", type=Path, default=ROOT, help="the source tree to run (default: this one)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--with-encoder", dest="with_encoder", action="store_true", default=True)
    mode.add_argument("--edgedet-only", dest="with_encoder", action="store_false")
    p.add_argument("--json", help="write the rows here too")
    args = p.parse_args()
    video = Path(args.video) if Path(args.video).exists() else ASSETS / "videos" / args.video
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgedet-sigkill-") as tmp:
        for after in args.after:
            row = kill_once(args.before.resolve(), video, after, Path(tmp), args.with_encoder, args.fps)
            rows.append(row)
            print(f"killed at {row['frames_written']:4d} frames written: {row['frames_decoded']:4d} decode "
                  f"({row['codec']} {row['profile']}, {row['duration_s']:.1f} s), lost {row['lost_s']:.1f} s"
                  + (f"  [{row['ffprobe_error']}]" if row["ffprobe_error"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
