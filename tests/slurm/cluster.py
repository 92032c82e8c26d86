"""A real two-node Slurm cluster on this one machine, for the Slurm backend's tests.

    cluster = SlurmCluster()          # base folder /tmp/runner-slurm (RUNNER_SLURM_BASE), bridge rslurm0
    cluster.up()                      # a few seconds; both nodes idle
    cluster.run("sbatch", "-w", "n1", "--wrap", "true")
    cluster.down()

    python -m tests.slurm.cluster up|down|status     # by hand (as root), for debugging

What runs (all as root, all private to the base folder, nothing of the distro's configuration is used):

- munged with its own key, socket, pid and log (``AuthInfo=socket=...`` in slurm.conf and slurmdbd.conf);
- mariadbd on a private datadir, unix socket only (``--skip-networking``); slurmdbd reaches it through the
  socket given in ``MYSQL_UNIX_PORT`` (the MariaDB client library reads it; slurmdbd.conf has no socket key);
- slurmdbd (accounting: ``sacct``, ``sacct --json``; ``AccountingStoreFlags=job_comment``);
- slurmctld on the host side of a Linux bridge (``rslurm0``, 10.231.0.1/24);
- two compute nodes n1 and n2: one slurmd each, in its own network namespace (``rslurm0-n1``, 10.231.0.11;
  ``rslurm0-n2``, 10.231.0.12) joined to the bridge by a veth pair; started with ``nsenter --net=...``, not
  ``ip netns exec`` (which remounts /sys, and slurmd then fails on cgroups).  Only the network is private to a
  node: files, processes, the Docker socket (a unix socket) and the munge socket are shared with the host.
- each node has CPUs=2 and two fake GPUs as GRES on character devices (``<base>/dev/n1/gpu0`` = c 1 3, the
  same device numbers as /dev/null); ``gres.conf`` names them with ``File=`` (a GPU count without files is
  dropped by slurmd: "Removing file-less GPU", node INVAL).

Docker's FORWARD policy (DROP) also drops traffic between the bridge's ports (br_netfilter): an ACCEPT rule for
the bridge is inserted in the DOCKER-USER chain, and removed by ``down()``.

A node failure (``stop_slurmd``) kills slurmd only: the jobs' slurmstepd and their scripts keep running in the
node's namespace, orphaned.  slurmctld marks the node DOWN after SlurmdTimeout (10 s, then up to one ping
period) and ends its jobs as NODE_FAIL (requeued unless submitted with ``--no-requeue``); the orphaned
processes go on until ``kill_node_jobs(node)`` or until the restarted slurmd registers: slurmctld then tells it
to kill the jobs it no longer knows.  A ``docker run`` client killed that way leaves its container running
(the container belongs to dockerd, not to the namespace).

Every daemon is recorded in ``<base>/run/<name>.pid`` ("pid starttime"), the network objects in
``<base>/run/net.json``; ``down()`` and the cleanup at the start of ``up()`` stop exactly those (by pid, never
by name) and remove exactly those.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_BASE = "/tmp/runner-slurm"
CLUSTER_NAME = "runnertest"
PARTITION = "gpu"


class SlurmClusterError(RuntimeError):
    pass


def _sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise SlurmClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if there is no such process
    or it is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path}: not there)"
    return "\n".join(f"  {line}" for line in text[-lines:]) or f"  ({path}: empty)"


class SlurmCluster:
    """A two-node Slurm cluster (n1, n2) with accounting; see the module docstring.

    Attributes a test uses: ``env`` (environment variables a Slurm client needs: pass ``{**os.environ,
    **cluster.env}`` or use ``run``), ``nodes``, ``base`` (a folder every node sees, for job folders: use
    ``base / "jobs"``), ``addrs`` (node -> IP address), ``gpus_per_node``, ``cpus_per_node``.
    """

    def __init__(self, base: str | os.PathLike | None = None, *, bridge: str | None = None, subnet: str | None = None,
                 nodes: tuple[str, ...] = ("n1", "n2"), cpus_per_node: int = 2, gpus_per_node: int = 2,
                 port_base: int | None = None, slurmd_timeout: int = 10):
        self.base = Path(base or os.environ.get("RUNNER_SLURM_BASE") or DEFAULT_BASE).resolve()
        self.bridge = bridge or os.environ.get("RUNNER_SLURM_BRIDGE", "rslurm0")
        net = ipaddress.ip_network(subnet or os.environ.get("RUNNER_SLURM_SUBNET", "10.231.0.0/24"))
        self.network = net
        hosts = list(net.hosts())
        self.ctl_addr = str(hosts[0])
        self.nodes = list(nodes)
        self.addrs = {n: str(hosts[10 + i]) for i, n in enumerate(self.nodes)}
        self.netns = {n: f"{self.bridge}-{n}" for n in self.nodes}
        self.veth = {n: f"{self.bridge}-{n}"[:15] for n in self.nodes}
        self.cpus_per_node = cpus_per_node
        self.gpus_per_node = gpus_per_node
        port = port_base or int(os.environ.get("RUNNER_SLURM_PORT_BASE", "16817"))
        self.ctld_port, self.slurmd_port, self.dbd_port = port, port + 1, port + 2
        self.slurmd_timeout = slurmd_timeout
        self.etc = self.base / "etc"
        self.conf = self.etc / "slurm.conf"
        self.logs = self.base / "log"
        self.rundir = self.base / "run"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.mysql_socket = self.base / "mysql" / "mysqld.sock"
        self.env: dict[str, str] = {"SLURM_CONF": str(self.conf)}
        self._procs: dict[str, subprocess.Popen] = {}

    # -- client side -------------------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = False, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client (sbatch, squeue, sacct, scancel, scontrol...) against this cluster."""
        env = {**os.environ, **self.env, **kw.pop("env", {})}
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise SlurmClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def node_states(self) -> dict[str, str]:
        """node -> sinfo's compact state ("idle", "alloc", "mix", "down*", "idle*", ...)."""
        proc = self.run("sinfo", "-h", "-N", "-o", "%N %t")
        states = {}
        for line in proc.stdout.splitlines():
            name, _, state = line.partition(" ")
            states[name] = state.strip()
        return states

    def wait_idle(self, timeout: float = 30, nodes: list[str] | None = None) -> None:
        """Wait until the nodes (all by default) are idle; raise with the daemons' log tails if not."""
        nodes = nodes or self.nodes
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if all(states.get(n) == "idle" for n in nodes):
                return
            time.sleep(0.2)
        raise SlurmClusterError(f"nodes not idle after {timeout:.0f} s: {states}\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")) if self.logs.is_dir() else []:
            parts.append(f"--- {log}\n{_tail(log, lines)}")
        return "\n".join(parts)

    # -- nodes ---------------------------------------------------------------------------------------------

    def stop_slurmd(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Kill that node's slurmd (SIGKILL: a crash; the node's jobs keep running, see the module docstring)."""
        self._stop(f"slurmd-{node}", sig=sig)

    def start_slurmd(self, node: str) -> None:
        """Start that node's slurmd (again); ``wait_idle`` to see it registered."""
        self._spawn(f"slurmd-{node}", ["nsenter", f"--net=/run/netns/{self.netns[node]}",
                                         "slurmd", "-D", "-N", node, "-f", str(self.conf)])

    def node_pids(self, node: str) -> list[int]:
        """Every process in the node's network namespace (slurmd, slurmstepd, job scripts)."""
        proc = _sh("ip", "netns", "pids", self.netns[node], check=False)
        return [int(p) for p in proc.stdout.split()]

    def kill_node_jobs(self, node: str, timeout: float = 10) -> None:
        """Kill everything in the node's namespace but its slurmd: the orphaned slurmstepd and job scripts a
        stopped slurmd leaves behind.  Containers a job started stay (they belong to dockerd)."""
        slurmd = self._recorded(f"slurmd-{node}")
        keep = {slurmd[0]} if slurmd else set()
        self._kill_pids([p for p in self.node_pids(node) if p not in keep], timeout)

    # -- up / down -----------------------------------------------------------------------------------------

    def up(self, timeout: float = 60) -> SlurmCluster:
        """Clean leftovers of an earlier run, write the configuration, start every daemon, and wait until both
        nodes are idle."""
        self._preflight()
        self.cleanup()
        shutil.rmtree(self.base, ignore_errors=True)
        for sub in ("etc", "log", "run", "state/ctld", "mysql", "jobs", *(f"spool/{n}" for n in self.nodes),
                    *(f"dev/{n}" for n in self.nodes)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        (self.base / "jobs").chmod(0o1777)
        try:
            self._network_up()
            self._write_config()
            self._start_munge()
            self._start_mariadb()
            self._start_slurmdbd()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(lambda: self.run("scontrol", "ping").stdout.count("UP") > 0, 20, "slurmctld answering")
            for node in self.nodes:
                self.start_slurmd(node)
            self.wait_idle(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop every daemon this cluster started (by pid) and remove its namespaces, veths, bridge and the
        DOCKER-USER rule.  The base folder stays (logs) until the next ``up()``."""
        self.cleanup()

    def cleanup(self) -> None:
        """Stop what a run of this cluster (this one or a crashed earlier one) left: the daemons recorded in
        <base>/run, every process in the nodes' namespaces, then the network objects."""
        for node in self.nodes:
            self._stop(f"slurmd-{node}", sig=signal.SIGTERM)
            if Path(f"/run/netns/{self.netns[node]}").exists():
                self._kill_pids(self.node_pids(node), 10)
        for name in ("slurmctld", "slurmdbd", "mariadbd", "munged"):
            self._stop(name, sig=signal.SIGTERM)
        if self.rundir.is_dir():  # anything else recorded (a node no longer in the list)
            for pidfile in self.rundir.glob("*.pid"):
                self._stop(pidfile.stem, sig=signal.SIGTERM)
        self._network_down()

    def status(self) -> str:
        lines = [f"base {self.base}", f"SLURM_CONF={self.conf}"]
        for pidfile in sorted(self.rundir.glob("*.pid")) if self.rundir.is_dir() else []:
            rec = self._recorded(pidfile.stem)
            lines.append(f"{pidfile.stem}: {'pid %d running' % rec[0] if rec else 'not running'}")
        if self.conf.exists():
            lines.append(self.run("sinfo", "-N").stdout.rstrip() or self.run("sinfo").stderr.rstrip())
        return "\n".join(lines)

    # -- internals -----------------------------------------------------------------------------------------

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise SlurmClusterError("the Slurm test cluster needs root (network namespaces, a bridge, iptables)")
        missing = [p for p in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "munged", "mariadbd", "mariadb-install-db",
                               "ip", "iptables", "nsenter") if not shutil.which(p)]
        if missing:
            raise SlurmClusterError(f"missing {' '.join(missing)}: run `bash scripts/ensure-slurm.sh` (as root)")
        for line in _sh("ip", "-o", "route", "show").stdout.splitlines():
            dest, _, rest = line.partition(" ")
            if dest == "default" or f"dev {self.bridge} " in line + " ":
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dest, strict=False).overlaps(self.network):
                    raise SlurmClusterError(f"subnet {self.network} collides with the route `{line.strip()}`: "
                                            "pick another with RUNNER_SLURM_SUBNET")

    def _pidfile(self, name: str) -> Path:
        return self.rundir / f"{name}.pid"

    def _recorded(self, name: str) -> tuple[int, str] | None:
        """(pid, start time) of the recorded daemon if that very process still runs."""
        try:
            pid_s, start = self._pidfile(name).read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        if _start_time(pid) != start:
            return None
        return pid, start

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **self.env, **(env or {})})
        out.close()
        self._procs[name] = proc
        start = None
        for _ in range(100):
            start = _start_time(proc.pid)
            if start:
                break
            time.sleep(0.01)
        self._pidfile(name).write_text(f"{proc.pid} {start}\n")
        return proc

    def _stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        rec = self._recorded(name)
        proc = self._procs.pop(name, None)
        if rec:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec[0], sig)
            self._wait_gone(rec[0], proc, timeout)
        elif proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0)
        self._pidfile(name).unlink(missing_ok=True)

    def _wait_gone(self, pid: int, proc: subprocess.Popen | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and _start_time(pid) is None:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def _kill_pids(self, pids: list[int], timeout: float) -> None:
        starts = {p: _start_time(p) for p in pids}
        for p, start in starts.items():
            if start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_start_time(p) == s for p, s in starts.items() if s):
            time.sleep(0.05)
        for p, start in starts.items():
            if start and _start_time(p) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if ready():
                    return
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmClusterError(f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                                            f"{self.log_tails()}\n--- {name}.out\n{_tail(self.logs / f'{name}.out')}")
            time.sleep(0.1)
        raise SlurmClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tails()}")

    # network

    def _network_up(self) -> None:
        prefix = self.network.prefixlen
        record = {"bridge": self.bridge, "netns": list(self.netns.values()), "veth": list(self.veth.values()),
                  "iptables": None}
        (self.rundir / "net.json").write_text(json.dumps(record))
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.ctl_addr}/{prefix}", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for node in self.nodes:
            ns, veth, peer = self.netns[node], self.veth[node], f"{self.bridge}p"[:15]
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            _sh("ip", "link", "set", peer, "netns", ns)
            _sh("ip", "-n", ns, "link", "set", peer, "name", "eth0")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addrs[node]}/{prefix}", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
        # Docker's FORWARD DROP policy drops bridged traffic between the nodes (br_netfilter): let it through.
        if _sh("iptables", "-n", "-L", "DOCKER-USER", check=False).returncode != 0:
            _sh("iptables", "-N", "DOCKER-USER")
        rule = ["-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        _sh("iptables", "-I", "DOCKER-USER", *rule)
        record["iptables"] = ["DOCKER-USER", *rule]
        (self.rundir / "net.json").write_text(json.dumps(record))

    def _network_down(self) -> None:
        record = {"bridge": self.bridge, "netns": list(self.netns.values()), "veth": list(self.veth.values()),
                  "iptables": ["DOCKER-USER", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]}
        with contextlib.suppress(OSError, ValueError):
            record.update(json.loads((self.rundir / "net.json").read_text()))
        if record.get("iptables"):
            chain, *rule = record["iptables"]
            for _ in range(20):  # every copy of the rule
                if _sh("iptables", "-D", chain, *rule, check=False).returncode != 0:
                    break
        for ns in record["netns"]:
            if Path(f"/run/netns/{ns}").exists():
                _sh("ip", "netns", "del", ns, check=False)
        for link in [*record["veth"], record["bridge"]]:
            if Path(f"/sys/class/net/{link}").exists():
                _sh("ip", "link", "del", link, check=False)

    # daemons

    def _start_munge(self) -> None:
        mdir = self.base / "munge"
        mdir.mkdir(mode=0o755, exist_ok=True)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", ["munged", "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={mdir / 'munged.pid'}", f"--seed-file={mdir / 'munged.seed'}",
                               f"--log-file={self.logs / 'munged.log'}"])
        self._wait(lambda: _sh("munge", "-n", "-S", str(self.munge_socket), check=False).returncode == 0, 10, "munged")

    def _start_mariadb(self) -> None:
        data = self.base / "mysql" / "data"
        _sh("mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db",
            "--auth-root-authentication-method=socket")
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.mysql_socket}",
                                 f"--pid-file={self.base / 'mysql' / 'mysqld.pid'}", "--skip-networking", "--user=root",
                                 f"--log-error={self.logs / 'mariadbd.log'}", "--innodb-buffer-pool-size=64M",
                                 "--innodb-log-file-size=16M", "--innodb-lock-wait-timeout=900"])
        self._wait(lambda: _sh("mariadb", "--no-defaults", "-S", str(self.mysql_socket), "-u", "root", "-e", "select 1",
                               check=False).returncode == 0, 30, "mariadbd")

    def _start_slurmdbd(self) -> None:
        # slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF; the MariaDB client library takes the
        # socket from $MYSQL_UNIX_PORT.
        self._spawn("slurmdbd", ["slurmdbd", "-D"], env={"MYSQL_UNIX_PORT": str(self.mysql_socket)})
        self._wait(lambda: self.run("sacctmgr", "-n", "list", "cluster").returncode == 0, 30, "slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, check=True)

    def _write_config(self) -> None:
        base, logs, host = self.base, self.logs, socket.gethostname().split(".")[0]
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        nodes = "\n".join(
            f"NodeName={n} NodeAddr={self.addrs[n]} NodeHostname={n} CPUs={self.cpus_per_node} RealMemory=8000 "
            f"Gres=gpu:{self.gpus_per_node} State=UNKNOWN" for n in self.nodes)
        self.conf.write_text(f"""\
# Written by tests/slurm/cluster.py
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}({self.ctl_addr})
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
{auth}CredType=cred/munge
StateSaveLocation={base}/state/ctld
SlurmdSpoolDir={base}/spool/%n
SlurmctldPidFile={base}/run/slurmctld.pidfile
SlurmdPidFile={base}/run/slurmd-%n.pidfile
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout={self.slurmd_timeout}
SlurmctldTimeout=10
MessageTimeout=5
KillWait=5
MinJobAge=10
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={self.ctl_addr}
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MailProg=/bin/true
{nodes}
PartitionName={PARTITION} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")
        (self.etc / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"NodeName={n} Name=gpu File={base}/dev/{n}/gpu[0-{self.gpus_per_node - 1}]\n" for n in self.nodes))
        for node in self.nodes:
            for i in range(self.gpus_per_node):
                os.mknod(base / "dev" / node / f"gpu{i}", 0o666 | 0o020000, os.makedev(1, 3))
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(f"""\
# Written by tests/slurm/cluster.py
{auth}DbdHost=localhost
DbdAddr={self.ctl_addr}
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={logs}/slurmdbd.log
PidFile={base}/run/slurmdbd.pidfile
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.slurm.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--base", default=None, help=f"base folder (default $RUNNER_SLURM_BASE or {DEFAULT_BASE})")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.base)
    try:
        if args.action == "up":
            t0 = time.monotonic()
            cluster.up()
            print(f"up in {time.monotonic() - t0:.1f} s; export SLURM_CONF={cluster.conf}")
        elif args.action == "down":
            cluster.down()
            print("down")
        else:
            print(cluster.status())
    except SlurmClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
