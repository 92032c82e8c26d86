"""`runner serve` as a separate process against the real Docker engine: inbox → chain,
SIGKILL mid-phase → restart re-adopts the same container, one verdict and one decision per
phase, the vault intact; `runner apply` submits to the running server; webhook messages."""
import hashlib
import http.server
import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path


from tests.conftest import REPO
from tests.integration.conftest import keep_containers, stop_server, wait_for


class Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(state: Path, inbox: Path, notify: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(state), "serve", "--inbox", str(inbox),
                             "--specs", str(REPO / "specs"), "--gpus", "none", "--notify", notify],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=REPO)


def test_server_inbox_sigkill_readopt_and_apply_submit(cli, tmp_path, docker_client):
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    notify = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    runs = cli.state.parent
    keep_containers(runs)  # phase 1's container is looked at after its end: the same one, never restarted
    inbox = runs / "inbox"
    log = tmp_path / "serve.log"
    server = serve(cli.state, inbox, notify, log)

    def status(run=None):
        out = cli("status", *([run] if run else []), "--output", "json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    try:
        wait_for("the server's inbox", lambda: (inbox / "accepted").is_dir(), timeout=30)
        shutil.copy(REPO / "specs/demo/pipeline.yaml", inbox / "pipeline.yaml")
        run_id = wait_for("the run", lambda: (cli.peek() or {}).get("runs") and cli.peek()["runs"][0]["id"])

        def phase1_midway():  # polled in process (cli.peek); `runner checkpoints` only once phase 1 runs
            s = cli.peek(run_id)
            p = s and s["phases"] and s["phases"][0]
            if not (p and p["status"] == "running"):
                return None
            ck = cli("checkpoints", run_id, "--output", "json")
            return ck.returncode == 0 and len(json.loads(ck.stdout)["checkpoints"]) >= 2 and p

        p1 = wait_for("phase 1 to be midway", phase1_midway)
        container = docker_client.containers.get(p1["container_id"])
        started = container.attrs["State"]["StartedAt"]
        before = {c["step"]: c["sha256"] for c in json.loads(cli("checkpoints", run_id, "--output", "json").stdout)["checkpoints"]
                  if c["sha256"]}

        server.send_signal(signal.SIGKILL)  # no handler, no cleanup
        server.wait(timeout=10)
        container.reload()
        assert container.status == "running"  # training never depends on the server
        queue = cli("queue")
        assert "server: none running" in queue.stdout
        # The trainer goes on while nobody watches: wait until it wrote a checkpoint newer than any vaulted.
        ckpt_dir = runs / run_id / "demo-phase1" / "ckpt"
        wait_for("a checkpoint written while no server watches", lambda: any(
            int(p.stem.split("step")[1]) > max(before, default=0) for p in ckpt_dir.glob("model_step*.pth"))
            or container.reload() or container.status != "running",
            timeout=120, every=0.1)

        server = serve(cli.state, inbox, notify, log)
        wait_for("the chain to finish", lambda: len((cli.peek(run_id) or {}).get("phases", [])) == 2
                 and cli.peek(run_id)["phases"][1]["status"] not in ("pending", "launching", "running", "detached"))
        final = status(run_id)
        p1, p2 = final["phases"]
        assert (p1["status"], p1["verdict"], p2["status"], p2["verdict"]) == ("succeeded", "success", "succeeded", "success")
        assert p1["container_id"] == container.id
        container.reload()
        assert container.attrs["State"]["StartedAt"] == started  # the same container, never restarted
        kinds = [e["kind"] for e in final["events"]]
        assert kinds.count("phase.succeeded") == 2 and kinds.count("chain.decision") == 2
        assert kinds.count("phase.launching") == 2  # phase 1 once, phase 2 once
        assert any("re-attached" in e["message"] for e in final["events"])
        after = {c["step"]: c for c in json.loads(cli("checkpoints", run_id, "demo-phase1", "--output", "json").stdout)["checkpoints"]}
        for step, sha in before.items():
            assert after[step]["sha256"] == sha
            if after[step]["state"] in ("best", "kept"):
                assert hashlib.sha256(Path(after[step]["vault_path"]).read_bytes()).hexdigest() == sha
        assert p2["inputs"]["resume_from"] == p1["outputs"]["best_checkpoint"]
        # The inbox file ended accepted, under the run id; the webhook heard both verdicts.
        assert (inbox / "accepted" / f"{run_id}-pipeline.yaml").read_bytes() == (REPO / "specs/demo/pipeline.yaml").read_bytes()
        assert not (inbox / "pipeline.yaml").exists()
        wait_for("webhook messages", lambda: sum(1 for m in Hook.received if m["event"] == "phase.succeeded"
                                                 and m["run"] == run_id) == 2, timeout=20)
        assert {m["phase"] for m in Hook.received if m["run"] == run_id} >= {"demo-phase1", "demo-phase2"}

        # `runner apply` finds the running server and submits instead of running here.
        out = cli("apply", str(REPO / "specs/demo/train.yaml"), "--input", "max_steps=30", "--priority", "3", timeout=60)
        assert out.returncode == 0, out.stderr
        assert "submitted to the server (pid" in out.stderr and "server.json" in out.stderr
        submitted = out.stdout.strip().splitlines()[-1]
        wait_for("the submitted run", lambda: (cli.peek(submitted) or {}).get("phases")
                 and cli.peek(submitted)["phases"][0]["status"] == "succeeded")
        done = status(submitted)
        assert done["phases"][0]["inputs"]["max_steps"] == "30"
        line = cli("status").stdout.splitlines()[0]
        assert line.startswith("server: pid") and "CPU slots" in line
    finally:
        stop_server(server)
        hook.shutdown()
    assert server.returncode == 0, log.read_text()[-3000:]
    assert "server stopped; training containers keep running" in log.read_text()
