"""`runner serve --http`: the read-only web page, started as a user would, fetched over HTTP, and
looked at in headless Chromium (Debian's package; scripts/ensure-docker.sh installs it)."""
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.report_run import make_run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=20) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory, docker_client):
    folder = tmp_path_factory.mktemp("http")
    state, run_id = make_run(folder)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(state), "serve", "--gpus", "none",
                             "--http", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "api/queue", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"runner serve --http did not answer: {proc.communicate()[0]}")
            time.sleep(0.2)
    yield {"base": base, "state": state, "run": run_id, "folder": folder}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_pages_and_api_over_http(site):
    base, run_id = site["base"], site["run"]
    status, kind, body = _get(base)
    assert status == 200 and kind.startswith("text/html")
    assert f'href="/runs/{run_id}"' in body and "p1-diverge" in body and "guard tripped (text_loss diverges)" in body
    status, _, body = _get(base + f"runs/{run_id}")
    assert status == 200 and "<svg" in body and "tripped at step 185" in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "<img" not in body
    # the API is what the CLI prints
    cli = subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(site["state"]), "status", "-o", "json"],
                         capture_output=True, text=True, check=True)
    status, kind, body = _get(base + "api/runs")
    assert status == 200 and kind.startswith("application/json")
    assert json.loads(body)["runs"] == json.loads(cli.stdout)["runs"]
    cli = subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(site["state"]), "status", run_id, "-o", "json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(_get(base + f"api/runs/{run_id}")[2]) == json.loads(cli.stdout)
    queue = json.loads(_get(base + "api/queue")[2])
    assert queue["queue"] == [] and queue["server"]["pid"]
    # read-only, and unknown runs are a 404 with the reason
    assert _get(base + "api/runs", method="POST")[0] == 405
    assert _get(base + f"runs/{run_id}", method="DELETE")[0] == 405
    status, _, body = _get(base + "api/runs/nope")
    assert status == 404 and "no run 'nope'" in json.loads(body)["error"]


def test_a_person_sees_the_report_in_chromium(site, tmp_path):
    browser = shutil.which("chromium")
    assert browser, "chromium missing: bash scripts/ensure-docker.sh installs it"
    url = site["base"] + f"runs/{site['run']}"
    shot = tmp_path / "report.png"  # the test's artifact: what a person sees
    common = [browser, *CHROMIUM_FLAGS, "--window-size=1100,1400"]
    subprocess.run([*common, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=90, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=90, check=True).stdout
    assert re.search(r"<h1>Run \S+ <span class=\"status succeeded\">succeeded</span> after a failure branch</h1>", dom)
    assert re.search(r'<figure class="plot" data-metric="text_loss"><svg', dom)
    assert 'class="taken"' in dom and "tripped at step 185" in dom
    assert "<img" not in dom  # the store's text stayed text
    (tmp_path / "report.dom.html").write_text(dom)
