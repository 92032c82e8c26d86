"""The Slurm job that runs one phase's container: its job script and its sbatch argv.  Pure: a plan
and the settings in, text and argv out (tested by equality, as the Docker backend's create request).

The job script runs the container on the allocated node with the container runtime's CLI.  Every
value from a spec is written with ``shlex.quote`` / ``shlex.join``: the script never builds a shell
string from spec values, and nothing is evaluated.  The runtime is one function
(``docker_run_argv``): Apptainer or enroot/pyxis would be another function of the same shape.

Files, all in ``PHASE_DIR/slurm/`` (on the filesystem runner's host and the nodes share):

* ``NAME.sh``        the job script (kept: what ran is on record);
* ``NAME.token``     written by runner just before sbatch; the job checks it sees the same bytes, or
                     the folder is not shared with the node (exit ``NOT_SHARED``);
* ``NAME.out``       the job's output: the container's stdout and stderr, and lines ``runner-slurm: ...``;
* ``NAME.times``     the output's clock: a line ``UNIX_TIME SIZE`` (seconds with nanoseconds, bytes) written
                     just after each second begins in which ``NAME.out`` has grown (read by logs(since=));
* ``NAME.exit.json`` written by the job when the container has ended: its exit code, whether it was
                     OOM-killed, the node, and the stage it got to.

Stopping: runner sends TERM to the batch shell only (``scancel --batch --signal=TERM``); the script
traps it and runs ``docker stop -t GRACE``, so the trainer gets SIGTERM and its grace period, and the
container never outlives its job.  Slurm's time limit does the same through ``--signal=B:TERM@N``.
Once the container is gone the script waits for Slurm to end the job (runner cancels it; the time limit
ends it), so Slurm's own record says CANCELLED or TIMEOUT.
"""
from __future__ import annotations

import json
import math
import shlex

from runner.errors import LaunchError, LaunchRefused
from runner.plan import LaunchPlan
from runner.settings import SlurmSettings

# Exit codes of the job script itself (the container's own exit code is passed through otherwise).
NO_ENGINE = 96  # no Docker engine answers on the node
NOT_SHARED = 97  # the phase folder is not visible on the node
NO_GPUS = 98  # the allocation holds no GPUs although the phase asked for some
NAME_TAKEN = 95  # a container with the phase's name exists on the node (left by something else)
STAGES = {
    NAME_TAKEN: "a container with the phase's name already exists on the node (`docker rm` it if it is stale)",
    NO_ENGINE: "no Docker engine answers on the node (`docker version` failed there)",
    NOT_SHARED: "the phase folder is not visible on the node: it must be on a filesystem shared by runner's host "
                "and the nodes",
    NO_GPUS: "Slurm gave the job no GPUs (no SLURM_JOB_GPUS or CUDA_VISIBLE_DEVICES): is gres/gpu configured "
             "on the node?",
}
# How long before Slurm's time limit the batch shell gets TERM, beyond the grace period.
SIGNAL_MARGIN_S = 30
# After a TERM stop, how long the script waits for Slurm to end the job (runner's scancel; the time limit,
# which comes grace + SIGNAL_MARGIN_S after the TERM) beyond grace + SIGNAL_MARGIN_S.
POST_STOP_WAIT_S = 120


def slurm_dir(plan: LaunchPlan) -> str:
    return f"{plan.phase_dir.rstrip('/')}/slurm"


def job_files(plan: LaunchPlan) -> dict[str, str]:
    base = f"{slurm_dir(plan)}/{plan.container_name}"
    return {"script": f"{base}.sh", "token": f"{base}.token", "out": f"{base}.out", "exit": f"{base}.exit.json",
            "times": f"{base}.times"}


def gpu_count(plan: LaunchPlan) -> int:
    """Slurm allocates GPUs by count; it, not runner, picks which ones on which node."""
    if isinstance(plan.gpus, int):
        return plan.gpus
    if plan.gpus == "all":
        raise LaunchError("gpus: all has no meaning under Slurm (which node's all?)",
                          "give a count (gpus: 2): Slurm allocates them on a node")
    raise LaunchError(f"gpus: {list(plan.gpus)} names device ids; under Slurm the scheduler picks the GPUs",
                      "give a count (gpus: 2)")


def _csv_field(text: str) -> str:
    """One field of docker's --mount value (parsed as CSV): quoted when it holds a comma or a quote."""
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def docker_run_argv(plan: LaunchPlan) -> list[str]:
    """``docker run`` options, image and command for a plan — what ``docker.create_kwargs`` asks of the
    SDK, as CLI arguments.  GPUs are added by the script from the allocation (``--gpus device=…``)."""
    argv = ["run", "--name", plan.container_name, "--init", "--pull", "never", "--stop-signal", "SIGTERM"]
    for key, value in plan.labels.items():
        argv += ["--label", f"{key}={value}"]
    env = dict(plan.env)
    if not plan.wants_gpu:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"  # as the Docker backend: a CPU phase sees no GPU
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for m in plan.mounts:
        fields = ["type=bind", _csv_field(f"source={m.source}"), _csv_field(f"target={m.target}")]
        if m.read_only:
            fields.append("readonly")
        argv += ["--mount", ",".join(fields)]
    if plan.workdir:
        argv += ["--workdir", plan.workdir]
    if plan.shm_size is not None:
        argv += ["--shm-size", str(plan.shm_size)]
    if plan.memory is not None:
        argv += ["--memory", str(plan.memory), "--memory-swap", str(plan.memory)]
    if plan.cpus is not None:
        argv += ["--cpus", f"{plan.cpus:g}"]
    if plan.user:
        argv += ["--user", plan.user]
    return argv + [plan.image, *plan.command]


def job_script(plan: LaunchPlan, settings: SlurmSettings, token: str) -> str:
    """The batch script for a plan (bash).  Its exit code is the container's, or one of its own
    (``NO_ENGINE``, ``NOT_SHARED``, ``NO_GPUS``); ``NAME.exit.json`` says which.

    Longer than the house's ~60 lines on purpose: it is the script, line by line, in the order it runs (one
    reading of what a node does, tested by running it with a stand-in docker in tests/unit/test_slurm_job.py)."""
    files = job_files(plan)
    q = shlex.quote
    grace = max(0, int(round(plan.stop_grace)))
    wants_gpu = gpu_count(plan) > 0
    lines = [
        "#!/bin/bash",
        f"# runner: phase {plan.phase} of run {plan.run_id}, container {plan.container_name}.",
        "# Written by runner (runner/backends/slurm_job.py) and kept as the record of what ran; runner reads",
        "# the container's outcome from the .exit.json file this script writes next to it.",
        "set -u",
        f"name={q(plan.container_name)}",
        f"token_file={q(files['token'])}",
        f"exit_file={q(files['exit'])}",
        f"token={q(token)}",
        f"docker=({shlex.join(settings.docker)})",
        *[f"export {k}={q(v)}" for k, v in settings.node_env.items()],  # keys: identifiers (settings.py)
        "say() { printf 'runner-slurm: %s\\n' \"$*\"; }",
        "record() {  # exit code (or null), OOM-killed, stage",
        "  printf '{\"exit_code\": %s, \"oom_killed\": %s, \"node\": \"%s\", \"stage\": \"%s\"}\\n' \\",
        "    \"$1\" \"$2\" \"${SLURMD_NODENAME:-}\" \"$3\" > \"$exit_file.tmp\" && mv -f \"$exit_file.tmp\" \"$exit_file\"",
        "}",
        'if [ "$(cat -- "$token_file" 2>/dev/null)" != "$token" ]; then',
        '  say "the phase folder $(dirname -- "$token_file") is not visible on node ${SLURMD_NODENAME:-?}'
        ' (not a shared filesystem)"',
        f"  exit {NOT_SHARED}",
        "fi",
        # The output's clock, for logs(since=): just after each second begins, the output file's size when it
        # has grown ("UNIX_TIME SIZE"; the time read before the size).  Its own process, never in the output's
        # way (the container writes to the file directly); ended with the script.
        f"out_file={q(files['out'])}",
        f"times_file={q(files['times'])}",
        "clock() {",
        "  local last=-1 ns left now size",
        "  while :; do",
        "    ns=$(date +%N) && left=$((1000000000 - 10#$ns)) || left=1000000000",
        "    sleep \"$((left / 1000000000)).$(printf '%09d' $((left % 1000000000)))\"",
        "    now=$(date +%s.%N) && size=$(stat -c %s -- \"$out_file\" 2>/dev/null) || continue",
        "    if [ \"$size\" != \"$last\" ]; then printf '%s %s\\n' \"$now\" \"$size\" >> \"$times_file\"; last=$size; fi",
        "  done",
        "}",
        "clock </dev/null >/dev/null 2>&1 &",
        "clock_pid=$!",
        "trap 'kill \"$clock_pid\" 2>/dev/null' EXIT",
        'if ! "${docker[@]}" version >/dev/null 2>&1; then',
        '  say "no Docker engine answers on node ${SLURMD_NODENAME:-?}: ${docker[*]} version failed"',
        f"  record null false no-engine; exit {NO_ENGINE}",
        "fi",
    ]
    if wants_gpu:
        lines += [
            'gpus="${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}"',
            'if [ -z "$gpus" ]; then',
            '  say "Slurm gave this job no GPUs (SLURM_JOB_GPUS and CUDA_VISIBLE_DEVICES are empty)"',
            f"  record null false no-gpus; exit {NO_GPUS}",
            "fi",
            "gpu_args=(--gpus \"\\\"device=$gpus\\\"\")  # the allocation's GPUs; inside, numbered from 0",
            'say "node ${SLURMD_NODENAME:-?}: GPUs $gpus"',
        ]
    else:
        lines += ["gpu_args=()", 'say "node ${SLURMD_NODENAME:-?}"']
    lines += [
        "stopping=0",
        "trap 'stopping=1' TERM INT  # acted on in the loop below, which also covers a container still being created",
        'if "${docker[@]}" inspect "$name" >/dev/null 2>&1; then',
        '  say "a container named $name exists already on node ${SLURMD_NODENAME:-?}; not starting another"',
        f"  exit {NAME_TAKEN}",
        "fi",
        f'"${{docker[@]}}" {shlex.join(docker_run_argv(plan)[:1])} ${{gpu_args[@]+"${{gpu_args[@]}}"}} '
        f'{shlex.join(docker_run_argv(plan)[1:])} &',
        "client=$!",
        "stopped=0",
        'while kill -0 "$client" 2>/dev/null; do',
        '  if [ "$stopping" = 1 ] && [ "$stopped" = 0 ] && "${docker[@]}" inspect "$name" >/dev/null 2>&1; then',
        f'    say "SIGTERM: stopping container $name (up to {grace}s, then SIGKILL)"',
        f'    "${{docker[@]}}" stop -t {grace} "$name" >/dev/null 2>&1 && stopped=1',
        "  fi",
        "  sleep 1 & wait $!  # a TERM interrupts this wait at once",
        "done",
        'wait "$client"; rc=$?',
        "inspect() { \"${docker[@]}\" inspect -f '{{.State.ExitCode}} {{.State.OOMKilled}} {{.State.Status}}' \"$name\" 2>/dev/null; }",
        "state=$(inspect)",
        'if [ -z "$state" ]; then  # docker run failed before a container existed (an image missing, a bad option)',
        '  record "$rc" false run-failed; exit "$rc"',
        "fi",
        'read -r code oom status <<<"$state"',
        'if [ "$status" = running ]; then  # the client died, the container runs on: stop it, then read its end',
        '  say "the docker client ended while the container runs; stopping it"',
        f'  "${{docker[@]}}" stop -t {grace} "$name" >/dev/null 2>&1',
        '  read -r code oom status <<<"$(inspect)"',
        "fi",
        'if [ "$status" = created ]; then record "$rc" false run-failed; else record "$code" "$oom" ran; rc=$code; fi',
        '"${docker[@]}" rm -f "$name" >/dev/null 2>&1',
        'if [ "$stopping" = 1 ]; then',
        "  # Stopped on TERM (runner's stop, or Slurm's time limit coming): the container is gone; wait for Slurm",
        "  # to end the job, so its record says CANCELLED or TIMEOUT rather than a failed exit (bounded).",
        f'  sleep {grace + SIGNAL_MARGIN_S + POST_STOP_WAIT_S} & wait $!',
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def time_limit_minutes(plan: LaunchPlan, settings: SlurmSettings) -> int | None:
    """The job's --time in minutes: the phase's timeout, its grace period and the margin (rounded up)."""
    if plan.timeout is None:
        return None
    return max(1, math.ceil((plan.timeout + plan.stop_grace + SIGNAL_MARGIN_S + settings.time_margin) / 60))


# The most characters runner puts in a job's --comment (slurmctld refuses a longer one: COMMENT_MAX).
COMMENT_MAX = 1024


def job_comment(plan: LaunchPlan) -> str:
    """The job's ``--comment``: every label of the plan as one line of JSON, runner's own two first (how
    inspect() and find() know the job's labels; slurm.labels_of reads it).  ASCII only (``ensure_ascii``: a
    newline or any other character beyond it is a JSON escape), so no Slurm command's output or parsing
    (sacct's ``|``-separated text, squeue's JSON) changes it.  Longer than ``COMMENT_MAX``: refused here,
    with the labels named, rather than cut by Slurm or losing labels the engine finds jobs by."""
    labels = {"runner.run-id": plan.run_id, "runner.phase": plan.phase}
    labels.update((k, v) for k, v in plan.labels.items() if k not in labels)
    comment = json.dumps(labels, separators=(",", ":"), ensure_ascii=True)
    if len(comment) > COMMENT_MAX:
        extra = sorted(k for k in plan.labels if not k.startswith("runner."))
        raise LaunchRefused(f"the phase's labels take {len(comment)} characters as the Slurm job's comment (JSON), "
                            f"over Slurm's limit of {COMMENT_MAX}", f"shorten or drop some of its labels ({', '.join(extra)})")
    return comment


def sbatch_argv(plan: LaunchPlan, settings: SlurmSettings) -> list[str]:
    """The sbatch command for a plan's job script (written at ``job_files(plan)['script']``)."""
    files = job_files(plan)
    comment = job_comment(plan)
    argv = ["sbatch", "--parsable", "--job-name", plan.container_name, "--comment", comment,
            "--chdir", slurm_dir(plan), "--output", files["out"], "--no-requeue",
            f"--signal=B:TERM@{int(plan.stop_grace) + SIGNAL_MARGIN_S}"]
    minutes = time_limit_minutes(plan, settings)
    if minutes is not None:
        argv += ["--time", str(minutes)]
    gpus = gpu_count(plan)
    if gpus:
        argv += [f"--gres=gpu:{gpus}"]
    if plan.cpus is not None:
        argv += ["--cpus-per-task", str(max(1, math.ceil(plan.cpus)))]
    if plan.memory is not None:
        argv += [f"--mem={max(1, math.ceil(plan.memory / 2**20))}M"]
    for flag, value in (("--partition", settings.partition), ("--account", settings.account), ("--qos", settings.qos)):
        if value:
            argv += [flag, value]
    return argv + list(settings.sbatch_args) + [files["script"]]
