"""The everyday loop, end to end: the README's main job and the control runs, from a cold cache.

    python benchmarks/main_job.py                 # all three jobs (about 5-10 min on 2 cores)
    python benchmarks/main_job.py --jobs main     # just `run --vision effnet-lite0 --text minilm`

Each job runs the real CLI in a subprocess, as the README types it (from a fresh working directory,
into the default relative ``results/``), with a fresh embedding cache (so nothing is reused), and
prints its wall time, the goal of issue 20 and the ratio time / goal, the phases the records time,
the probe's epochs, and the scores next to the figures measured before the fast-loop work
(2026-12-02, quiet 2-core machine; README "The embedded demo").
Run it only while nothing else runs on the machine: the figures are wall-clock seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (CLI arguments after `alignprobe`, goal in seconds, the seconds measured before)
JOBS = {
    "main": (["run", "--vision", "effnet-lite0", "--text", "minilm"], 60, 292),
    "pixels": (["run", "--vision", "pixels", "--text", "minilm"], 45, 97),
    "controls": (["sweep", "--vision", "pixels,hog,random-vit", "--text", "minilm,bow"], 300, 570),
}
# The scores of the main job before (README, measured 2026-12-02, seed 0).
BEFORE_MAIN = {"kmeans_nmi": 0.901, "linear_probe_top1": 1.000, "zero_shot_top1": 1.000,
               "i2t_r10": 0.758, "t2i_r10": 0.700, "cka": 0.704}
SCORES = ("kmeans_nmi", "linear_probe_top1", "zero_shot_top1", "i2t_r1", "i2t_r10", "t2i_r10",
          "mutual_knn", "mutual_knn_calibrated", "cka", "cka_calibrated")


def _run(name: str, args: list[str], work: Path) -> dict:
    env = dict(os.environ, ALIGNPROBE_CACHE_DIR=str(work / f"cache-{name}"), TQDM_DISABLE="1")
    # The command as the README types it: from a directory of its own, into the default
    # (relative) `results/` -- an absolute --results-dir once hid a failure of the default.
    cwd = work / f"job-{name}"
    cwd.mkdir(parents=True, exist_ok=True)
    results = cwd / "results"
    cmd = [sys.executable, "-m", "alignprobe.cli", *args, "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    records = [r for r in records if isinstance(r, dict) and r.get("status") == "ok"]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_gib": after.ru_maxrss / 2**20, "records": records}


def _report(name: str, goal: float, before_s: float, res: dict) -> None:
    print(f"\n## {name}: {res['wall_s']:.1f} s wall ({res['cpu_s']:.0f} s CPU), goal {goal} s "
          f"(time / goal {res['wall_s'] / goal:.2f}); before {before_s} s (before / now "
          f"{before_s / res['wall_s']:.1f}x); peak RSS of a child {res['peak_rss_gib']:.2f} GiB")
    for rec in res["records"]:
        m, d = rec.get("metrics", {}), rec.get("details", {})
        phases = ", ".join(f"{k} {v:.1f}" for k, v in rec.get("timings_s", {}).items())
        print(f"- {rec['vision']} x {rec['text']}: phases (s) {phases}")
        print(f"  probe best epoch {d.get('probe_best_epoch')}, stopped early {d.get('probe_stopped_early')}")
        print("  " + ", ".join(f"{k} {m[k]:.3f}" for k in SCORES if isinstance(m.get(k), (int, float))))
        if name == "main":
            print("  before: " + ", ".join(f"{k} {v:.3f}" for k, v in BEFORE_MAIN.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma list of {sorted(JOBS)}")
    parser.add_argument("--keep", default=None, help="keep the caches and results in this directory")
    args = parser.parse_args()
    names = [n.strip() for n in args.jobs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(JOBS))
    if unknown:
        parser.error(f"unknown job(s) {unknown}; choose from {sorted(JOBS)}")
    print(f"# main_job.py: {os.cpu_count()} CPUs; cold cache for every job")
    with tempfile.TemporaryDirectory(prefix="alignprobe-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        for name in names:
            cli_args, goal, before_s = JOBS[name]
            _report(name, goal, before_s, _run(name, cli_args, work))


if __name__ == "__main__":
    main()
