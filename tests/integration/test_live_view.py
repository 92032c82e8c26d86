"""`runner apply` in a real terminal (tmux, 140x40): the status area is redrawn in place, the
container's output scrolls above it, and the criteria's standing is shown while the run goes."""
import re
import shutil
import subprocess
import sys
import textwrap
import time

from tests.integration.conftest import TEST_LABEL, TRAINER_IMAGE

HEAD = re.compile(r"^live-demo  running  elapsed \d+:\d\d:\d\d")


def _spec(tmp_path, test_id):
    path = tmp_path / "live.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: runner/v1
        kind: Phase
        name: live-demo
        labels: {{{TEST_LABEL}: "{test_id}"}}
        inputs: {{max_steps: 140}}
        container:
          image: {TRAINER_IMAGE}
          command: [python3, /app/train.py, --learning-rate, 3e-3, --max-steps, "${{{{ inputs.max_steps }}}}",
                    --save-every, 1000, --step-delay, 0.05, --logdir, "${{{{ phase.dir }}}}/tb",
                    --output-dir, "${{{{ phase.dir }}}}/ckpt"]
          mounts: [{{source: "${{{{ run.dir }}}}", target: "${{{{ run.dir }}}}", create: true}}]
        metrics:
          tensorboard: {{logdir: "${{{{ phase.dir }}}}/tb", tags: {{text_loss: train/text_loss}}}}
          total_steps: "${{{{ inputs.max_steps }}}}"
        guards:
          - {{metric: text_loss, diverges: {{above_best_by: 50%, for: 20 steps, smoothing: 0.6}}}}
        success:
          all:
            - {{metric: text_loss, window: last 50 steps, reduce: mean, below: 9.5}}
        """))
    return path


def test_live_view_in_a_real_terminal(tmp_path, test_id):
    assert shutil.which("tmux"), "tmux missing: bash scripts/ensure-docker.sh installs it"
    spec = _spec(tmp_path, test_id)
    sock, session = f"runner-{test_id}", "live"
    cmd = [sys.executable, "-m", "runner.cli", "--state", str(tmp_path / "runs" / "runner.db"), "apply", str(spec),
           "--input", "max_steps=120", "--local"]
    tmux = ["tmux", "-L", sock]
    # `; sleep` keeps the pane after runner exits, so its last screen can be read too
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "140", "-y", "40",
                    subprocess.list2cmdline(cmd) + "; echo RUNNER-EXIT=$?; sleep 60"], check=True)
    screens = []
    try:
        deadline = time.monotonic() + 90
        last = None
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                    check=True).stdout
            if "RUNNER-EXIT=" in screen:
                break
            head = [ln for ln in screen.splitlines() if HEAD.match(ln)]
            if head and "measured" in screen and head[0] != last:  # a refresh with metrics
                screens.append(screen)
                last = head[0]
            time.sleep(0.7)
        final = screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    (tmp_path / "screens.txt").write_text("\n-----\n".join(screens + [final]))
    assert len(screens) >= 4, f"too few refreshes seen: {len(screens)}\n{final}"
    for screen in screens[-4:]:
        lines = screen.splitlines()
        heads = [i for i, ln in enumerate(lines) if HEAD.match(ln)]
        assert len(heads) == 1, f"not exactly one status area:\n{screen}"
        top = heads[0]
        assert re.search(r"step \d+/120 ", lines[top]), lines[top]  # total_steps follows --input max_steps
        assert sum(1 for ln in lines if ln.startswith("metric ")) == 1, screen
        # the container's output above the status area, none below it
        assert any(re.match(r"step \d+ text_loss ", ln) for ln in lines[:top]), screen
        assert not any(re.match(r"step \d+ text_loss ", ln) for ln in lines[top:]), screen
        # the criteria's standing: measured value vs threshold
        assert any(re.search(r"[✓✗] mean\(text_loss, last 50 steps\) < 9\.5: measured \d", ln) for ln in lines[top:]), screen
        assert not any("no data" in ln for ln in lines[top:]), screen
        assert any(ln.startswith("guard text_loss diverges: smoothed ") for ln in lines[top:]), screen
    assert "RUNNER-EXIT=0" in final, final
    assert "verdict: success" in final and not any(HEAD.match(ln) for ln in final.splitlines()), final
