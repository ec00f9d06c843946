#!/usr/bin/env python3
"""Benchmark ``edgedet prune`` on SSD MobileNet v1 quant: mAP, sizes, invoke time, run time.

Calibration uses only the asset videos and photos (``videos/``, ``images/``), never the
evaluation set; coco_tiny_val2017 is used only to report mAP. One run prints:

- dense model: mAP, file size raw/gzip/zstd, invoke ms;
- ``prune --sparsity 0.5`` (reconstruct, sensitivity allocation) from scratch: run time, achieved
  pointwise sparsity, mAP, sizes, invoke ms before/after;
- the sparsity -> mAP curve (30..70 %) of magnitude (uniform) and reconstruct (sensitivity), plus
  reconstruct with uniform per-layer sparsity at 50 %.

    python tools/bench_prune.py [--assets DIR] [--num-calib 128] [--threads 2] [--plot curve.png]

``--frontier ROWS.json`` instead times the models listed there (``[{"label", "path", "person_ap",
"tiny_map"}, ...]``, an accuracy may be null; accuracies from ``edgedet eval --compare``) in ONE
interleaved run at 2 and 1 threads (per round, each model: min of 5 invokes on a real photo; median
over rounds), prints a markdown table and, with ``--plot``, draws invoke ms vs person AP and vs coco_tiny mAP:

    python tools/bench_prune.py --frontier rows.json --rounds 40 --plot docs/pruning_curve.png
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgedet.tflite import model_to_bytes, read_model  # noqa: E402
from edgedet.tools.prune import (  # noqa: E402
    PruneOptions,
    file_sizes,
    invoke_ms,
    load_calibration,
    map_of,  # noqa: E402
    prune,
    prune_model,
)


def mb(n):
    return "n/a" if n is None else f"{n / 1e6:.3f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=os.environ.get("EDGEDET_ASSETS", str(ROOT.parent / "shared" / "assets")))
    ap.add_argument("--num-calib", type=int, default=PruneOptions.num_calib)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--curve", default="0.3,0.4,0.5,0.6,0.7")
    ap.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=PruneOptions.sequential)
    ap.add_argument("--plot", default=None, help="save the sparsity -> mAP curve PNG here")
    ap.add_argument("--json", default=None, help="write all figures as JSON here")
    ap.add_argument("--frontier", default=None, help="time the models of this JSON file (see above) instead")
    ap.add_argument("--rounds", type=int, default=40, help="--frontier: interleaved rounds per thread count")
    args = ap.parse_args()
    if args.frontier:
        return frontier(args)
    assets = Path(args.assets)
    src = assets / "models" / "ssd_mobilenet_v1_coco_quant_postprocess.tflite"
    images = assets / "datasets" / "coco_tiny_val2017" / "val2017"
    ann = assets / "datasets" / "coco_tiny_val2017" / "annotations" / "instances_val2017.json"
    calib = [str(assets / "videos"), str(assets / "images")]
    out: dict = {"num_calib": args.num_calib, "threads": args.threads}
    t_all = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", file=sys.stderr, flush=True)

    dense_map = map_of(src, images, ann, args.threads)
    dense_sizes = file_sizes(src.read_bytes())
    out["dense"] = {"mAP": dense_map, "sizes": dense_sizes}
    print(f"dense: mAP {dense_map:.4f}; raw {mb(dense_sizes['raw'])}, gzip {mb(dense_sizes['gzip'])}, "
          f"zstd {mb(dense_sizes['zstd'])}", flush=True)

    opts = PruneOptions(sparsity=args.sparsity, method="reconstruct", calibration=calib, num_calib=args.num_calib,
                        threads=args.threads, sequential=args.sequential, progress=log)
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "pruned.tflite"
        rep = prune(src, dst, opts)
        run_s = rep.seconds
        m = map_of(dst, images, ann, args.threads)
        point = sum(r.sparsity * r.size for r in rep.layers if r.kind == "pointwise") / max(
            sum(r.size for r in rep.layers if r.kind == "pointwise"), 1)
        out["prune"] = {**rep.to_dict(), "mAP": m, "pointwise_sparsity": point}
        print(rep.format_table(), flush=True)
        print(f"prune --sparsity {args.sparsity} (reconstruct, sensitivity allocation, {args.num_calib} "
              f"calibration inputs): {run_s:.1f} s; pointwise weights zero {point:.1%}; mAP {dense_map:.4f} -> "
              f"{m:.4f} ({(m - dense_map) * 100:+.2f} points)", flush=True)
        print(f"sizes src: raw {mb(rep.sizes['src']['raw'])}, gzip {mb(rep.sizes['src']['gzip'])}, zstd "
              f"{mb(rep.sizes['src']['zstd'])}; pruned: raw {mb(rep.sizes['out']['raw'])}, gzip "
              f"{mb(rep.sizes['out']['gzip'])}, zstd {mb(rep.sizes['out']['zstd'])}", flush=True)
        # invoke time: alternate dense / pruned rounds so load from other processes hits both alike
        rounds = {"dense": [], "pruned": []}
        for _ in range(5):
            rounds["dense"].append(invoke_ms(src, args.threads, runs=40))
            rounds["pruned"].append(invoke_ms(dst, args.threads, runs=40))
        ms = {k: float(sorted(v)[len(v) // 2]) for k, v in rounds.items()}
        out["invoke_ms"] = ms
        print(f"invoke ms (median of 5 alternating rounds x 40, XNNPACK, {args.threads} threads): dense "
              f"{ms['dense']:.2f}, pruned {ms['pruned']:.2f} (ratio {ms['pruned'] / ms['dense']:.2f})", flush=True)

    # the curve: calibration read once, sensitivity measured once per method
    base = read_model(src)
    inputs = load_calibration(src, opts)
    curve = [float(s) for s in args.curve.split(",")]
    rows = []
    plan = [("magnitude (uniform)", "magnitude", "uniform", curve),
            ("reconstruct (sensitivity)", "reconstruct", "sensitivity", curve),
            ("reconstruct (uniform)", "reconstruct", "uniform", [args.sparsity]),
            ("magnitude (sensitivity)", "magnitude", "sensitivity", [args.sparsity])]
    for label, method, allocation, sparsities in plan:
        cache: dict = {}
        for s in sparsities:
            o = copy.copy(opts)
            o.method, o.allocation, o.sparsity = method, allocation, s
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            results, agree = prune_model(model, o, inputs=inputs if method == "reconstruct" or
                                         allocation == "sensitivity" else None, curves=cache)
            secs = time.perf_counter() - t0
            data = model_to_bytes(model)
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "m.tflite"
                p.write_bytes(data)
                m = map_of(p, images, ann, args.threads)
            achieved = sum(r.sparsity * r.size for r in results) / sum(r.size for r in results)
            sizes = file_sizes(data)
            rows.append({"method": label, "target": s, "sparsity": achieved, "mAP": m, "seconds": secs,
                         "agreement": agree, "sizes": sizes})
            print(f"curve {label:<26} target {s:.0%} zero {achieved:6.1%}  mAP {m:.4f} ({(m - dense_map) * 100:+.2f})"
                  f"  gzip {mb(sizes['gzip'])} zstd {mb(sizes['zstd'])}  {secs:6.1f} s", flush=True)
    out["curve"] = rows
    if args.plot:
        from edgedet.tools.prune import SensitivityReport, plot_curve

        rep = SensitivityReport(metric="mAP", grid=(), dense=dense_map)
        for r in rows:
            rep.curve.setdefault(r["method"], []).append((r["target"], r["sparsity"], r["mAP"]))
        rep.curve = {k: v for k, v in rep.curve.items() if len(v) > 1}
        plot_curve(rep, args.plot)
        print(f"curve plot: {args.plot}")
    out["seconds"] = time.perf_counter() - t_all
    print(f"bench total {out['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


def _photo_input(interp, assets: Path):
    """A real photo as the model's input tensor (detections make the postprocess op do real work)."""
    import cv2

    from edgedet.tools.prune import input_spec, preprocess

    bgr = cv2.imread(str(assets / "images" / "coral" / "kite_and_cold.jpg"))
    return preprocess(bgr, input_spec(interp))


def interleaved_ms(paths: list, threads: int, rounds: int, assets: Path) -> list:
    """Per model: median over ``rounds`` of the min of 5 invokes, models taking turns in every round."""
    import numpy as np

    from edgedet.tflite import load_interpreter

    interps = []
    for p in paths:
        it = load_interpreter(p, threads)
        it.set_tensor(it.get_input_details()[0]["index"], _photo_input(it, assets))
        it.invoke()
        interps.append(it)
    per = np.zeros((rounds, len(interps)))
    for r in range(rounds):
        for i, it in enumerate(interps):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                it.invoke()
                times.append(time.perf_counter() - t0)
            per[r, i] = min(times) * 1e3
    return [float(np.median(per[:, i])) for i in range(len(interps))]


def frontier(args) -> int:
    rows = json.loads(Path(args.frontier).read_text())
    assets = Path(args.assets)
    load = os.getloadavg()[0]
    for threads in (2, 1):
        for row, ms in zip(rows, interleaved_ms([r["path"] for r in rows], threads, args.rounds, assets)):
            row[f"ms_{threads}t"] = ms
    print(f"load average at the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}; {args.rounds} rounds")
    print("| model | invoke ms, 2 threads | 1 thread | person AP | coco_tiny mAP (100 det) |")
    print("|---|---|---|---|---|")
    def cell(v):
        return "n/a" if v is None else f"{v:.2f}"

    for r in rows:
        print(f"| {r['label']} | {r['ms_2t']:.2f} | {r['ms_1t']:.2f} | {cell(r['person_ap'])} | "
              f"{cell(r['tiny_map'])} |")
    if args.plot:
        plot_frontier(rows, args.plot)
        print(f"frontier plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def plot_frontier(rows: list, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for ax, key, name in ((axes[0], "person_ap", "person AP, coco_person_val2017"),
                          (axes[1], "tiny_map", "mAP (100 det), coco_tiny_val2017")):
        for i, r in enumerate(rows):
            if r[key] is None:  # e.g. a person-only model has no 80-class mAP
                continue
            color = f"C{i}"
            ax.plot([r["ms_2t"]], [r[key]], "o", color=color, label=r["label"])
            ax.plot([r["ms_1t"]], [r[key]], "s", color=color, fillstyle="none")
            ax.plot([r["ms_2t"], r["ms_1t"]], [r[key]] * 2, "-", color=color, lw=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("invoke ms (filled: 2 threads, open: 1 thread; x86, log scale)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("SSD MobileNet v1: speed vs accuracy (up and left is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
