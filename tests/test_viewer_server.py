"""``wsiproc view`` as a real server process: the index, tiles, the only files it serves, the
404s for everything else, the reports' links to it, and a clean stop on SIGTERM and Ctrl-C."""

from __future__ import annotations

import csv
import html
import http.client
import io
import re
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from viewer_run import ViewerProcess

from wsiproc.cli import main


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def summary(viewer_run) -> list[dict[str, str]]:
    """The run's summary.tsv rows."""
    with open(viewer_run.results / "summary.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_index_lists_every_slide_by_patient_with_status_flags_and_links(
    viewer_server, viewer_run
) -> None:
    status, headers, body = get(viewer_server.url, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    rows = dict(re.findall(r'<tr class="slide" data-slide="([^"]+)">(.*?)</tr>', page))
    expected = summary(viewer_run)
    assert set(rows) == {r["slide_id"] for r in expected} == set(viewer_run.slides)
    assert {r["status"] for r in expected} == {"ok", "flagged", "failed"}
    for record in expected:
        row = rows[record["slide_id"]]
        assert f'<span class="status {record["status"]}">{record["status"]}</span>' in row
        for flag in record["flags"].split(",") if record["flags"] not in ("OK", "NA") else []:
            assert f'<span class="flag">{flag}</span>' in row
        if record["status"] == "failed":
            assert html.escape(record["error"]) in row
        link = f"/slide/{record['slide_id']}"
        assert f'<a class="slide-link" href="{link}">{record["slide_id"]}</a>' in row
        status, _, slide_page = get(viewer_server.url, link)
        assert status == 200 and record["slide_id"].encode() in slide_page
        for thumb in re.findall(r'<img class="thumb" src="([^"]+)"', row):
            status, headers, data = get(viewer_server.url, thumb)
            assert status == 200 and headers["Content-Type"] == "image/png"
            assert Image.open(io.BytesIO(data)).size[0] > 0
    # Patients head their slides, in order.
    assert page.index("Patient P1") < page.index('data-slide="KNOWN"') < page.index("Patient P2")
    assert page.index("Patient P2") < page.index('data-slide="GLASS"')


def test_slide_page_of_a_failed_slide_says_why_it_cannot_be_shown(viewer_server) -> None:
    status, _, body = get(viewer_server.url, "/slide/EMPTY")
    assert status == 200
    page = body.decode()
    assert "file is empty (0 bytes)" in page
    assert '"dzi": null' in page
    assert get(viewer_server.url, "/slide/EMPTY/slide.dzi")[0] == 404


def test_tiles_are_made_on_demand_cached_and_revalidated(viewer_server) -> None:
    status, _, xml = get(viewer_server.url, "/slide/SECOND/slide.dzi")
    assert status == 200
    assert b'Overlap="1" TileSize="254"><Size Width="1200" Height="900"/>' in xml
    path = "/slide/SECOND/slide_files/11/2_1.jpeg"  # level 11 = full resolution (1200 px)
    status, headers, first = get(viewer_server.url, path)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(first)).size == (256, 256)
    status, again, second = get(viewer_server.url, path)
    assert again["X-Cache"] == "hit" and second == first
    status, _, body = get(viewer_server.url, path, {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    heat = "/slide/SECOND/heatmap/mean_g/magma_files/11/0_0.png"
    status, headers, data = get(viewer_server.url, heat)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    status, _, data = get(viewer_server.url, "/slide/SECOND/window.json?x=300&y=200")
    assert status == 200 and b'"columns"' in data


@pytest.mark.parametrize(
    "path",
    [
        "/slide/NOPE",
        "/slide/NOPE/slide.dzi",
        "/slide/NOPE/slide_files/0/0_0.jpeg",
        "/slide/KNOWN/slide_files/99/0_0.jpeg",
        "/slide/KNOWN/slide_files/11/99_0.jpeg",
        "/slide/KNOWN/slide_files/11/0_0.png",
        "/slide/KNOWN/heatmap/nope/viridis.dzi",
        "/slide/KNOWN/heatmap/mean_r/nope.dzi",
        "/slide/KNOWN/heatmap/mean_r/nope_files/0/0_0.png",
        "/slide/KNOWN/window.json",
        "/slide/KNOWN/window.json?x=nan&y=1",
        "/slide/KNOWN/anything",
        "/colormap/nope.png",
        "/static/nope.js",
        "/nope",
        # Traversal, plain and encoded, out of the results and static folders.
        "/files/../samples.tsv",
        "/files/%2e%2e/samples.tsv",
        "/files/..%2fsamples.tsv",
        "/files/P1/..%2F..%2Fsamples.tsv",
        "/files/P1/KNOWN/../../../samples.tsv",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/P1%5C..%5C..%5Csamples.tsv",
        "/files/summary.tsv%00.png",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/slide/..%2f..%2fsamples.tsv",
        "/slide/%2e%2e",
        "/files/link-out.tsv",  # a symlink inside the results pointing outside
        "/files/P1",  # a folder
    ],
)
def test_unknown_ids_and_path_traversal_get_404(viewer_server, viewer_run, path: str) -> None:
    assert (viewer_run.results.parent / "samples.tsv").is_file()  # there to be stolen
    link = viewer_run.results / "link-out.tsv"
    if not link.is_symlink():
        link.symlink_to(viewer_run.results.parent / "samples.tsv")
    status, _, body = get(viewer_server.url, path)
    assert status == 404, (path, body[:200])
    assert b"patient\tslide\tpath" not in body and b"root:" not in body


def test_serves_results_files_and_static_files(viewer_server, viewer_run) -> None:
    status, _, body = get(viewer_server.url, "/files/summary.tsv")
    assert status == 200 and body == (viewer_run.results / "summary.tsv").read_bytes()
    status, _, body = get(viewer_server.url, "/files/P1/KNOWN/windows.csv")
    assert status == 200 and body == (viewer_run.results / "P1/KNOWN/windows.csv").read_bytes()
    status, headers, body = get(viewer_server.url, "/static/openseadragon/LICENSE.txt")
    assert status == 200 and b"OpenSeadragon contributors" in body
    status, headers, body = get(viewer_server.url, "/static/openseadragon/openseadragon.min.js")
    assert status == 200 and body.startswith(b"//! openseadragon")


def test_reports_name_the_viewer_command_and_link_to_it_when_served(
    viewer_server, viewer_run
) -> None:
    command = f"wsiproc view {viewer_run.results.resolve()}"
    report = (viewer_run.results / "report.html").read_text()
    qc = (viewer_run.results / "P1" / "KNOWN" / "qc.html").read_text()
    for page in (report, qc):
        assert f"<code>{html.escape(command)}</code>" in page
        # From disk the links lead nowhere, so they are hidden.
        assert '<a class="wsiproc-view" href="/slide/KNOWN" hidden>' in page
    for path in ("/files/report.html", "/files/P1/KNOWN/qc.html"):
        status, _, body = get(viewer_server.url, path)
        served = body.decode()
        assert status == 200
        assert '<a class="wsiproc-view" href="/slide/KNOWN">' in served
        assert '<p class="wsiproc-view-hint" hidden>' in served
        href = re.search(r'<a class="wsiproc-view" href="([^"]+)">', served).group(1)
        assert get(viewer_server.url, href)[0] == 200


def _listening(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _local_addresses(port: int) -> set[str]:
    """Local IPv4 addresses listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_stops_the_server_cleanly(viewer_run, sig: signal.Signals) -> None:
    server = ViewerProcess(viewer_run.results)
    parts = urlsplit(server.url)
    try:
        assert parts.hostname == "127.0.0.1"  # loopback unless told otherwise
        assert _local_addresses(parts.port) == {"127.0.0.1"}
        assert get(server.url, "/slide/KNOWN/slide_files/10/1_1.jpeg")[0] == 200
    finally:
        start = time.monotonic()
        code = server.stop(sig)
    assert code == 0
    assert time.monotonic() - start < 10
    assert not _listening("127.0.0.1", parts.port)
    assert server.stdout[-1].strip() == "wsiproc view: stopped"


def test_bad_results_folder_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert main(["view", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing'}: no such folder (give the workflow's outdir)"]
    assert main(["view", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {tmp_path.resolve() / 'summary.tsv'}: no such file")


def test_port_in_use_is_one_error_line(viewer_server, viewer_run, capsys) -> None:
    port = urlsplit(viewer_server.url).port
    assert main(["view", str(viewer_run.results), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --port: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_catalog_follows_a_rewritten_summary_and_skips_rows_leaving_the_folder(
    tmp_path: Path,
) -> None:
    from wsiproc.viewer.catalog import Catalog

    summary = tmp_path / "summary.tsv"
    summary.write_text("patient\tslide_id\tstatus\tflags\nP1\tA\tok\tOK\n")
    catalog = Catalog(tmp_path)
    assert [(e.slide_id, e.status, e.flags) for e in catalog.entries()] == [("A", "ok", ())]
    summary.write_text(
        "patient\tslide_id\tstatus\tflags\nP1\tA\tflagged\tblurry,pen_marks\n"
        "..\tB\tok\tOK\nP2\t..\tok\tOK\nP3\tC\tnot run\tNA\n"
    )
    entries = catalog.entries()
    assert [(e.slide_id, e.status, e.flags) for e in entries] == [
        ("A", "flagged", ("blurry", "pen_marks")),
        ("C", "not run", ()),
    ]
    assert entries[0].folder == tmp_path.resolve() / "P1" / "A"
    assert catalog.get("B") is None


def test_qc_html_outside_the_workflow_layout_gives_the_general_command(
    viewer_run, tmp_path: Path
) -> None:
    folder = viewer_run.results / "P1" / "KNOWN"
    _, slide = viewer_run.slides["KNOWN"]
    html_path = tmp_path / "qc.html"
    code = main(
        ["qc", str(slide), "--level-json", str(folder / "level.json"),
         "--windows", str(folder / "windows.csv"), "--out", str(tmp_path / "qc.json"),
         "--html", str(html_path)]
    )  # fmt: skip
    assert code == 0
    assert "<code>wsiproc view RESULTS_DIR</code>" in html_path.read_text()


def _rss_mb(pid: int) -> float:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_serving_every_tile_of_a_slide_keeps_memory_bounded(tmp_path: Path) -> None:
    """Every full-resolution tile of an 8000×6000 slide (144 MB of pixels) through a 1 MB
    cache: the server's memory stays near where it started, far below the slide's size."""
    import pyvips

    from wsiproc.synth import tissue_image

    small = pyvips.Image.new_from_array(tissue_image(1000, 750, seed=5)).copy(interpretation="srgb")
    big = small.resize(8, kernel="linear")
    noise = pyvips.Image.gaussnoise(big.width, big.height, sigma=9)
    textured = (big + noise.bandjoin([noise, noise])).cast("uchar").copy(interpretation="srgb")
    slide = tmp_path / "big.tif"
    options = {"tile_width": 256, "tile_height": 256, "xres": 4000.0, "yres": 4000.0}
    textured.tiffsave(str(slide), tile=True, pyramid=True, compression="jpeg", Q=85, **options)
    results = tmp_path / "results"
    (results / "P" / "BIG").mkdir(parents=True)
    assert main(["level", str(slide), "--out", str(results / "P/BIG/level.json")]) == 0
    (results / "summary.tsv").write_text("patient\tslide_id\tstatus\tflags\nP\tBIG\tok\tOK\n")
    server = ViewerProcess(results, "--cache-mb", "1")
    try:
        parts = urlsplit(server.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", "/slide/BIG/slide_files/13/0_0.jpeg")
        conn.getresponse().read()
        start = _rss_mb(server.proc.pid)
        served = 0
        for row in range(24):  # 8000×6000 at level 13: 32×24 tiles of 254 pixels
            for col in range(32):
                conn.request("GET", f"/slide/BIG/slide_files/13/{col}_{row}.jpeg")
                response = conn.getresponse()
                served += len(response.read())
                assert response.status == 200
        end = _rss_mb(server.proc.pid)
        conn.close()
    finally:
        server.stop()
    assert served > 2 * 2**20  # more than the cache holds
    assert end - start < 40, (start, end)
