"""Measure ``wsiproc view``'s tiles: warm latency, parallel throughput, bounded cache and memory.

Generates a slide (pyvips JPEG pyramidal TIFF, 0.25 µm/px, ~40% tissue, fixed seed), runs the
per-slide stages on it in the workflow's layout, starts a real ``wsiproc view`` process and
requests tiles over HTTP as a browser would (keep-alive connections):

- the first tile (the slide opens), then distinct full-resolution slide and heatmap tiles on a
  warm server (not in the tile cache: made from the slide file), then the same tiles again
  (from the cache);
- distinct uncached tiles fetched by 1 and by 4 parallel connections (tiles/s);
- a second server with an 8 MB cache swept over every slide and heatmap tile of the full
  resolution level (several times more bytes than the cache holds): its resident memory.

Prints a table and, with ``--json PATH``, writes every figure.

Usage: python benchmarks/bench_tiles.py [--json out.json] [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import SLIDE_MPP, make_slide  # noqa: E402 - the engine benchmark's slide

SMALL_CACHE_MB = 8


def wsiproc(*args: str) -> None:
    """Run one ``wsiproc`` stage as the workflow does; stop on failure."""
    proc = subprocess.run([sys.executable, "-m", "wsiproc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"wsiproc {args[0]} failed:\n{proc.stderr}")


def make_run(workdir: Path, slide: Path) -> Path:
    """The workflow's layout for one slide (level, infer, heatmap, qc, report)."""
    results = workdir / "results"
    out = results / "P1" / "BENCH"
    if (results / "summary.tsv").exists():
        return results
    out.mkdir(parents=True, exist_ok=True)
    sheet = workdir / "samples.tsv"
    sheet.write_text(f"patient\tslide\tpath\nP1\tBENCH\t{slide}\n")
    level = str(out / "level.json")
    wsiproc(
        "level",
        str(slide),
        "--out",
        level,
        "--mpp",
        "0.5",
        "--thumbnail",
        str(out / "thumbnail.png"),
        "--mask",
        str(out / "mask.png"),
    )
    wsiproc(
        "infer",
        str(slide),
        "--out",
        str(out / "windows.csv"),
        "--plan",
        level,
        "--kernel-size",
        "224",
        "--stride",
        "112",
        "--model",
        "builtin:stain",
        "--workers",
        "2",
        "--patient",
        "P1",
        "--slide-id",
        "BENCH",
        "--quiet",
    )
    wsiproc(
        "heatmap",
        str(out / "windows.csv"),
        "--out",
        str(out / "heatmap.tif"),
        "--rgb-out",
        str(out / "heatmap_rgb.tif"),
    )
    wsiproc(
        "qc",
        str(slide),
        "--level-json",
        level,
        "--windows",
        str(out / "windows.csv"),
        "--out",
        str(out / "qc.json"),
        "--html",
        str(out / "qc.html"),
    )
    wsiproc("report", "--sheet", str(sheet), "--results", str(results), "--logs",
            str(workdir / "logs"), "--out-html", str(results / "report.html"),
            "--out-tsv", str(results / "summary.tsv"))  # fmt: skip
    return results


class Server:
    """A ``wsiproc view`` process on a free port."""

    def __init__(self, results: Path, cache_mb: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsiproc", "view", str(results), "--port", "0",
             "--cache-mb", str(cache_mb)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.search(r"open (http://\S+)", line)
            if match:
                parts = urlsplit(match.group(1))
                self.host, self.port = parts.hostname, parts.port
                break
        else:
            raise SystemExit("wsiproc view did not start")

    def rss_mb(self) -> float:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.proc.terminate()
        self.proc.wait(timeout=30)


_local = threading.local()


def fetch(server: Server, path: str) -> tuple[float, int, str]:
    """(seconds, bytes, X-Cache) of one GET on this thread's keep-alive connection."""
    conn = getattr(_local, "conn", None)
    if conn is None or getattr(_local, "port", None) != server.port:
        conn = _local.conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        _local.port = server.port
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status}: {body[:200]!r}")
    return elapsed, len(body), response.getheader("X-Cache") or ""


def stats_ms(seconds: list[float]) -> dict:
    """Median, 95th percentile and mean in ms."""
    ms = np.array(seconds) * 1000
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def tissue_tiles(results: Path, level_count: int, level: int) -> list[tuple[int, int]]:
    """Tile addresses at ``level`` whose centre has a window (tissue), in scan order."""
    import pandas as pd

    table = pd.read_csv(results / "P1" / "BENCH" / "windows.csv", usecols=["x", "y"])
    downsample = 2 ** (level_count - 1 - level)
    cells = {(int(x // (254 * downsample)), int(y // (254 * downsample))) for x, y in
             zip(table["x"], table["y"], strict=True)}  # fmt: skip
    return sorted(cells, key=lambda c: (c[1], c[0]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parallel_tiles(server: Server, results: Path, deepzoom, level: int) -> dict:
    """Distinct uncached tiles of ``level`` (resized from level 0) by 1 and by 4 connections,
    alternating (1, 4, 1, 4) so drift on a shared machine hits both: tiles/s and how many
    cores the server kept busy."""
    base = "/slide/BENCH/slide_files"
    addresses = tissue_tiles(results, deepzoom.level_count, level)
    batches = [addresses[i::4] for i in range(4)]
    rates: dict[int, list[float]] = {1: [], 4: []}
    busy: dict[int, list[float]] = {1: [], 4: []}
    for threads, batch in zip((1, 4, 1, 4), batches, strict=True):
        paths = [f"{base}/{level}/{c}_{r}.jpeg" for c, r in batch]
        cpu0, start = cpu_seconds(server.proc.pid), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda p: fetch(server, p), paths))
        wall = time.perf_counter() - start
        assert all(x == "miss" for _, _, x in done)
        rates[threads].append(len(paths) / wall)
        busy[threads].append((cpu_seconds(server.proc.pid) - cpu0) / wall)
    return {
        "level": level,
        "tiles_per_batch": len(batches[0]),
        "1_connection_tiles_per_s": round(float(np.mean(rates[1])), 1),
        "4_connections_tiles_per_s": round(float(np.mean(rates[4])), 1),
        "1_connection_server_cores_busy": round(float(np.mean(busy[1])), 2),
        "4_connections_server_cores_busy": round(float(np.mean(busy[4])), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smaller slide (smoke run)")
    parser.add_argument("--workdir", help="keep generated files here (default: a temp dir)")
    args = parser.parse_args()
    width, height = (8000, 6000) if args.quick else (20000, 15000)
    n_tiles = 60 if args.quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        slide = make_slide(workdir / f"bench_{width}x{height}.tif", width, height, seed=3)
        results = make_run(workdir, slide)
        load_before = os.getloadavg()[0]
        report = measure(results, width, height, n_tiles)
    report["machine"] = {
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    report["slide"] = {"width": width, "height": height, "mpp": SLIDE_MPP}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def measure(results: Path, width: int, height: int, n_tiles: int) -> dict:
    """Every figure, from two server processes."""
    from wsiproc.viewer.deepzoom import DeepZoom

    deepzoom = DeepZoom(width, height)
    top = deepzoom.level_count - 1
    base = "/slide/BENCH/slide_files"
    heat = "/slide/BENCH/heatmap/hematoxylin/viridis_files"
    report: dict = {}

    server = Server(results, cache_mb=256)
    try:
        start = time.perf_counter()
        fetch(server, "/slide/BENCH")  # opens the slide, heatmap and CSV
        elapsed, _, _ = fetch(server, f"{base}/0/0_0.jpeg")
        report["first_page_and_tile_ms"] = round((time.perf_counter() - start) * 1000, 1)
        report["top_tile_whole_slide_ms"] = round(elapsed * 1000, 1)
        addresses = tissue_tiles(results, deepzoom.level_count, top)
        step = max(1, len(addresses) // n_tiles)
        first = addresses[::step][:n_tiles]
        cold = [fetch(server, f"{base}/{top}/{c}_{r}.jpeg") for c, r in first]
        assert all(x == "miss" for _, _, x in cold)
        warm = [fetch(server, f"{base}/{top}/{c}_{r}.jpeg") for c, r in first]
        assert all(x == "hit" for _, _, x in warm)
        heat_cold = [fetch(server, f"{heat}/{top}/{c}_{r}.png") for c, r in first]
        heat_warm = [fetch(server, f"{heat}/{top}/{c}_{r}.png") for c, r in first]
        report["slide_tile_uncached"] = stats_ms([t for t, _, _ in cold])
        report["slide_tile_cached"] = stats_ms([t for t, _, _ in warm])
        report["heatmap_tile_uncached"] = stats_ms([t for t, _, _ in heat_cold])
        report["heatmap_tile_cached"] = stats_ms([t for t, _, _ in heat_warm])
        report["slide_tile_kb"] = round(np.mean([b for _, b, _ in cold]) / 1024, 1)

        report["parallel_uncached"] = parallel_tiles(server, results, deepzoom, top - 1)
        report["rss_mb_after"] = round(server.rss_mb(), 1)
    finally:
        server.stop()

    server = Server(results, cache_mb=SMALL_CACHE_MB)
    try:
        fetch(server, f"{base}/0/0_0.jpeg")
        rss_start = server.rss_mb()
        served = 0
        count = 0
        peak = rss_start
        for level in (top,):
            cols, rows = deepzoom.tile_counts(level)
            for r in range(rows):
                for c in range(cols):
                    served += fetch(server, f"{base}/{level}/{c}_{r}.jpeg")[1]
                    served += fetch(server, f"{heat}/{level}/{c}_{r}.png")[1]
                    count += 2
                peak = max(peak, server.rss_mb())
        report["bounded_cache"] = {
            "cache_mb": SMALL_CACHE_MB,
            "tiles": count,
            "served_mb": round(served / 2**20, 1),
            "rss_mb_start": round(rss_start, 1),
            "rss_mb_peak": round(peak, 1),
        }
    finally:
        server.stop()
    return report


if __name__ == "__main__":
    raise SystemExit(main())
