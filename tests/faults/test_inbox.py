"""Rows 23-31 with a real `runner serve` and the real engine: hostile drops into the inbox.  (The same rows
against the server's parts, without an engine: tests/unit/test_server_parts.py, tests/unit/test_loader.py.)"""
import json
import os
import shutil
import time


from tests.integration.conftest import keep_containers
from tests.faults.conftest import TEST_LABEL, check_invariants, labelled_containers, serve, first_phase, status, wait_for
from tests.integration.conftest import stop_server

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


INJECTION = "x; rm -rf /ckpt"
ARGV = ["sh", "-c", 'sleep 3; echo "$1"', "sh", INJECTION]  # the shell only as argv[0..2]; the injection is data


def spec(test_id, name, command=json.dumps(ARGV), container_extra="", top=""):
    return (f"apiVersion: runner/v1\nkind: Phase\nname: {name}\nlabels: {{{TEST_LABEL}: \"{test_id}\"}}\n{top}"
            f"container:\n  image: runner-base:bookworm\n  command: {command}\n{container_extra}")


def drop(inbox, name, text):
    """The inbox protocol: write a temporary name, then rename."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, inbox / name)


def test_rows23_to_31_hostile_drops_each_end_in_one_state_and_the_server_runs_on(cli, tmp_path, docker_client, test_id):
    keep_containers(cli.state.parent)  # the ended container is looked at after the phase
    inbox = cli.state.parent / "inbox"
    library = tmp_path / "library"
    library.mkdir()
    log = tmp_path / "serve.log"
    server = serve(cli, inbox, library, log)
    try:
        wait_for("the server's inbox", lambda: (inbox / "accepted").is_dir(), timeout=30)
        good = spec(test_id, "good")
        hostile = {
            "syntax.yaml": "apiVersion: runner/v1\nkind: [unclosed\n",                                  # 24
            "schema.yaml": spec(test_id, "schema", container_extra="  gpus: many\n"),                 # 24
            "laughs.yaml": BILLION_LAUGHS,                                                           # 25
            "dupkey.yaml": spec(test_id, "dupkey", top="name: again\n"),                              # 26
            "float.yaml": spec(test_id, "flt", top="inputs: {lr: 1e-4}\n", container_extra="  gpus: yes\n"),  # 26
            "traversal.yaml": spec(test_id, "trav", container_extra="  mounts: [{source: /etc/../etc, target: /x}]\n"),  # 29
            "socket.yaml": spec(test_id, "sock", container_extra="  mounts: [{source: /var/run/docker.sock, target: /s}]\n"),
            "privileged.yaml": spec(test_id, "priv", container_extra="  privileged: true\n"),         # 30
            "hostnet.yaml": spec(test_id, "net", container_extra="  network_mode: host\n"),          # 30
        }
        drop(inbox, "good.yaml", good)
        drop(inbox, "again.yaml", good)                                                                # 27: the same spec twice
        for name, text in hostile.items():
            drop(inbox, name, text)
        os.symlink("/etc/shadow", inbox / "link.yaml")                                                # 28
        with open(inbox / "slow.yaml", "w") as f:                                                      # 23: written in two halves
            text = spec(test_id, "slow")
            f.write(text[: len(text) // 2])
            f.flush()
            time.sleep(1.5)
            f.write(text[len(text) // 2:])

        def settled():
            return sorted(os.listdir(inbox)) == ["accepted", "duplicates", "rejected"] and status(cli)["runs"]

        wait_for("every drop to be settled", settled, timeout=60)

        accepted = sorted(p.name.split("-", 3)[-1] for p in (inbox / "accepted").iterdir())
        duplicates = sorted(p.name for p in (inbox / "duplicates").iterdir() if not p.name.endswith(".txt"))
        assert len(duplicates) == 1 and sorted(accepted + duplicates) == ["again.yaml", "good.yaml", "slow.yaml"], \
            (accepted, duplicates)
        rejected = {p.name for p in (inbox / "rejected").iterdir()}
        for name in [*hostile, "link.yaml"]:  # each with its reason file
            assert name in rejected and f"{name}.error.txt" in rejected, (name, sorted(rejected))
        assert (inbox / "rejected" / "link.yaml").is_symlink()  # moved, never followed
        assert server.poll() is None, log.read_text()[-3000:]  # the server runs on

        runs = status(cli)["runs"]
        assert len(runs) == 2  # one run per accepted file; nothing for the rejected ones
        for run in runs:
            wait_for("the run to end", lambda: first_phase(cli, run["id"]).get("status") not in
                     (None, "pending", "launching", "running", "detached"), timeout=60)
            doc = check_invariants(cli, run["id"], docker_client)
            assert doc["phases"][0]["status"] == "succeeded"
        made = labelled_containers(docker_client, test_id)
        assert len(made) == 2
        for c in made:  # 30, 31: nothing escalated, argv passed as is
            host = c.attrs["HostConfig"]
            assert host["Privileged"] is False and not host.get("CapAdd") and host["NetworkMode"] != "host"
            assert not any("docker.sock" in (m.get("Source") or "") for m in c.attrs["Mounts"])
            assert c.attrs["Config"]["Cmd"] == ARGV
            assert c.logs().decode().strip() == INJECTION
    finally:
        stop_server(server)


def test_a_spec_run_locally_then_dropped_in_the_inbox_is_accepted(cli, tmp_path, docker_client, test_id):
    path = tmp_path / "local.yaml"
    path.write_text(spec(test_id, "local"))
    out = cli("apply", str(path), timeout=60)
    assert out.returncode == 0, out.stderr
    inbox = cli.state.parent / "inbox"
    library = tmp_path / "library"
    library.mkdir()
    server = serve(cli, inbox, library, tmp_path / "serve.log")
    try:
        wait_for("the server's inbox", lambda: (inbox / "accepted").is_dir(), timeout=30)
        shutil.copy(path, inbox / ".local.tmp")
        os.replace(inbox / ".local.tmp", inbox / "local.yaml")
        wait_for("the drop to be settled", lambda: not (inbox / "local.yaml").exists(), timeout=60)
        assert [p.name for p in (inbox / "duplicates").iterdir()] == []
        assert len(list((inbox / "accepted").iterdir())) == 1
    finally:
        stop_server(server)
