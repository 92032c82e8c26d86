#!/usr/bin/env bash
# Make sure the programs of the two-node Slurm test cluster (tests/slurm/cluster.py) are installed: Slurm's
# daemons and clients, slurmdbd, munge and MariaDB (for sacct), ip and iptables (the nodes' network
# namespaces and bridge).  Installs them from Debian packages if not (needs root).  Starts nothing: the test
# fixture starts its own private daemons; a daemon that a package's postinst started anyway is stopped.
# Used by scripts/test.sh and CI.  Safe to rerun.
set -euo pipefail
say() { printf '[ensure-slurm] %s\n' "$*" >&2; }

missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client slurmdbd:slurmdbd munged:munge \
            mariadbd:mariadb-server mariadb-install-db:mariadb-server ip:iproute2 iptables:iptables \
            nsenter:util-linux; do
  prog=${pair%%:*} pkg=${pair#*:}
  if ! command -v "$prog" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$prog" ]; then
    case " ${missing[*]:-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  say "missing ${missing[*]} and this is not root: install them (sudo apt-get install -y ${missing[*]})"
  exit 1
fi
say "installing ${missing[*]} from Debian packages"
# Keep the packages' init scripts from starting the distro's daemons (policy-rc.d exit 101 = "not allowed");
# a policy-rc.d that is there already is left alone.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi
trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
log=$(mktemp)
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
         apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -20 "$log" >&2
  say "apt-get install ${missing[*]} failed (output above)"
  exit 1
fi
rm -f "$log"

# If a postinst started a daemon all the same, stop it by the pid in its distro pid file.
for pidfile in /run/munge/munged.pid /run/mysqld/mysqld.pid /run/slurmctld.pid /run/slurmd.pid \
               /run/slurmdbd.pid /var/run/munge/munged.pid /var/run/mysqld/mysqld.pid; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the distro daemon that the package started (pid $pid from $pidfile)"
    kill "$pid" 2>/dev/null || true
  fi
done
say "Slurm, munge and MariaDB are installed"
