"""`runner serve --http HOST:PORT`: a read-only web page beside TensorBoard (the only starlette and
uvicorn imports).

Pages: / (runs and the queue), /runs/RUN (the run's report, the renderer of `runner report`).
JSON under /api/: /api/runs (= `runner status -o json`), /api/runs/RUN (= `runner status RUN -o json`),
/api/queue (= `runner queue -o json`).  GET only: nothing here changes the store.  Every text from the
store is HTML-escaped."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from runner.lifecycle import S
from runner.errors import NotFound, RunnerError, UsageError
from runner.report import e, page, render_body, run_report, when
from runner.store import ACTIVE, Store
from runner.units import format_duration
from runner.runs.views import queue_rows, run_view

REFRESH_S = 10  # the runs page reloads itself this often


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT, or PORT alone (on 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"--http {text!r}: the port must be 0..65535")
    return (host.strip("[]") or "127.0.0.1"), number


class Pages:
    def __init__(self, store: Store, runs_dir: Path, server_info):
        self.store = store
        self.runs_dir = runs_dir
        self.server_info = server_info  # () -> the server's heartbeat dict, or None

    def _engine(self):
        from runner.backends.select import docker_factory
        from runner.engine import Engine

        return Engine(self.store, docker_factory, self.runs_dir)  # views only: the backend is never created

    def _live(self, row: dict) -> dict | None:
        from runner.runs.operations import live_view

        return live_view(self._engine(), row["id"])

    def api_runs(self, request: Request) -> Response:
        return _json({"runs": [run_view(self.store, r["id"]) for r in self.store.runs()]})

    def api_run(self, request: Request) -> Response:
        from runner.runs.operations import run_document

        run_id = self.store.resolve_run(request.path_params["run"])
        return _json(run_document(self._engine(), run_id))  # the same document as `runner status RUN -o json`

    def api_queue(self, request: Request) -> Response:
        return _json({"server": self.server_info(), "queue": queue_rows(self.store)})

    def index(self, request: Request) -> Response:
        server = self.server_info()
        rows = []
        for r in self.store.runs():
            view = run_view(self.store, r["id"])
            phases = self.store.phases(r["id"])
            cells = []
            for p, row in zip(view["phases"], phases):
                progress = ""
                if row["status"] in (S.RUNNING, S.DETACHED):
                    live = self._live(row) or {}
                    bits = []
                    if live.get("step") is not None:
                        bits.append(f"step {live['step']:,}" + (f"/{live['total']:,}" if live.get("total") else ""))
                    if live.get("eta") is not None:
                        bits.append(f"ETA {format_duration(live['eta'])}")
                    bits += [f"{m['name']} {m['value']:.4g}" for m in live.get("metrics", [])[:3]]
                    progress = ", ".join(bits)
                cells.append(f'<tr class="phase-row"><td><a href="/runs/{e(view["id"])}">{e(view["id"])}</a></td>'
                             f'<td>{e(p["name"])}</td><td><span class="status {e(p["status"])}">{e(p["status"])}</span></td>'
                             f'<td>{e(p["verdict"] or "")}</td><td>{e(progress)}</td><td>{e(p["reason"])}</td></tr>')
            if not phases:
                cells.append(f'<tr class="phase-row"><td><a href="/runs/{e(view["id"])}">{e(view["id"])}</a></td><td>-</td>'
                             f'<td><span class="status {e(view["status"])}">{e(view["status"])}</span></td><td></td><td></td><td></td></tr>')
            rows += cells
        queue = queue_rows(self.store)
        body = ["<h1>runner</h1>"]
        if server:
            age = float(server.get("heartbeat_age") or 0)
            body.append(f"<p>server pid {e(server.get('pid'))} on {e(server.get('host'))}, heartbeat "
                        f"{age:.0f}s ago; inbox {e(server.get('inbox') or '-')}</p>")
        body.append('<h2>Runs</h2><table id="runs"><tr><th>run</th><th>phase</th><th>status</th><th>verdict</th>'
                    "<th>progress</th><th>reason</th></tr>" + "".join(rows) + "</table>")
        if not rows:
            body.append('<p class="muted">no runs yet</p>')
        body.append('<h2>Queue</h2><table id="queue"><tr><th>#</th><th>run</th><th>priority</th><th>phase or spec</th>'
                    "<th>waiting for</th><th>submitted</th></tr>"
                    + "".join(f"<tr><td>{i}</td><td>{e(q['run'])}</td><td>{e(q['priority'])}</td>"
                              f"<td>{e(q['phase'] or Path(q['spec']).name)}</td><td>{e(q['waiting_for'])}</td>"
                              f"<td>{e(q['submitted_at'])}</td></tr>" for i, q in enumerate(queue, 1))
                    + "</table>" + ("" if queue else '<p class="muted">nothing waiting</p>'))
        body.append(f'<p class="muted">read-only; JSON: <a href="/api/runs">/api/runs</a>, <a href="/api/queue">/api/queue</a>; '
                    f"as of {e(when(time.time()))}, reloads every {REFRESH_S}s</p>")
        return HTMLResponse(page("runner: runs", "".join(body), refresh=REFRESH_S))

    def run_page(self, request: Request) -> Response:
        run_id = self.store.resolve_run(request.path_params["run"])
        rep = run_report(self.store, run_id)
        going = any(p.row["status"] in ACTIVE for p in rep.phases)
        body = '<p><a href="/">← all runs</a></p>' + render_body(rep)
        return HTMLResponse(page(f"runner: run {run_id}", body, refresh=REFRESH_S * 3 if going else None))


def _json(doc) -> Response:
    return Response(json.dumps(doc, indent=2, default=str) + "\n", media_type="application/json")


def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return Response(json.dumps({"error": str(exc)}) + "\n", status_code=404, media_type="application/json")
    return HTMLResponse(page("runner: not found", f"<h1>Not found</h1><p>{e(exc)}</p><p><a href='/'>all runs</a></p>"),
                        status_code=404)


def make_app(store: Store, runs_dir: Path, server_info=lambda: None) -> Starlette:
    p = Pages(store, runs_dir, server_info)
    routes = [Route("/", p.index, methods=["GET"]), Route("/runs/{run}", p.run_page, methods=["GET"]),
              Route("/api/runs", p.api_runs, methods=["GET"]), Route("/api/runs/{run}", p.api_run, methods=["GET"]),
              Route("/api/queue", p.api_queue, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={NotFound: _not_found})


class WebServer:
    """The web page in a thread beside the server loop.  The socket is bound at once, so a port in use
    is one clear error before anything else starts."""

    def __init__(self, app: Starlette, address: str):
        host, port = parse_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise RunnerError(f"cannot serve http on {host}:{port}: {exc.strerror or exc}",
                              "pick another port with --http HOST:PORT") from None
        self.sock.listen(64)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()
