"""Docker backend through the Docker SDK.  The only module that imports ``docker``.

Docker's exceptions are translated here into runner.errors, so nothing above
this module knows docker-py exists.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest, LogConfig, Mount

from runner import faults
from runner.backends.base import ContainerState
from runner.errors import ContainerNotFound, EngineUnavailable, GpuUnavailable, ImageMissing, LaunchError, RunnerError
from runner.plan import LaunchPlan

BUILD_HINT = "runner never pulls; build it first (reference trainer: bash images/build-offline.sh) or `docker pull` it"
ENGINE_HINT = "start it with `systemctl start docker` (or `dockerd &`), or point DOCKER_HOST at a running engine"
NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
DOCKER_LOG_MAX_SIZE = "100m"  # per file, two files: Docker keeps at most 200 MB of a container's output
# Substrings of the engine's error when --gpus is asked of an engine without the NVIDIA runtime.
# (Docker's built-in NVIDIA device driver registers itself only when nvidia-container-runtime-hook
# is on the engine's PATH; without it, any DeviceRequest is refused with "could not select device driver".)
_GPU_ERRORS = ("could not select device driver", "nvidia-container-cli", "unknown or invalid runtime name: nvidia")


def create_kwargs(plan: LaunchPlan) -> dict[str, Any]:
    """Pure: the exact keyword arguments for ``client.containers.create``.

    Mounts are ``Mount(type="bind")`` because, unlike ``-v`` style binds, a
    missing source is then an error instead of an empty root-owned folder.
    Never ``auto_remove``: the exit code and logs must outlive the container.

    GPUs go through Docker's NVIDIA device driver (``device_requests``, as ``docker run --gpus``): it
    sets NVIDIA_VISIBLE_DEVICES to the requested ids and runs nvidia-container-runtime-hook, which
    mounts only those devices, so inside the container they are numbered from 0.  runner therefore
    never sets CUDA_VISIBLE_DEVICES (host ids would be wrong there).  A CPU phase gets
    NVIDIA_VISIBLE_DEVICES=void: CUDA images set it to ``all``, and on a host whose default runtime
    is nvidia-container-runtime that would hand every GPU to a phase the scheduler gave none.
    """
    environment = dict(plan.env)
    if not plan.wants_gpu:
        environment[NVIDIA_VISIBLE_DEVICES] = "void"
    kwargs: dict[str, Any] = {
        "image": plan.image,
        "command": list(plan.command),
        "name": plan.container_name,
        "labels": dict(plan.labels),
        "environment": environment,
        "mounts": [Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only) for m in plan.mounts],
        "detach": True,
        "stop_signal": "SIGTERM",
        # Docker's own copy of the output, bounded (runner keeps container.log): a flooding trainer must
        # not fill the engine's disk.
        "log_config": LogConfig(type="json-file", config={"max-size": DOCKER_LOG_MAX_SIZE, "max-file": "2"}),
    }
    if plan.workdir:
        kwargs["working_dir"] = plan.workdir
    if plan.shm_size is not None:
        kwargs["shm_size"] = plan.shm_size
    if plan.memory is not None:
        # memswap == memory: no swap, so exceeding the limit is an OOM kill, not a crawl.
        kwargs["mem_limit"] = plan.memory
        kwargs["memswap_limit"] = plan.memory
    if plan.cpus is not None:
        kwargs["nano_cpus"] = int(plan.cpus * 1e9)
    if plan.user:
        kwargs["user"] = plan.user
    if plan.gpus == "all":
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    elif isinstance(plan.gpus, tuple):
        kwargs["device_requests"] = [DeviceRequest(device_ids=list(plan.gpus), capabilities=[["gpu"]])]
    elif plan.gpus:
        kwargs["device_requests"] = [DeviceRequest(count=plan.gpus, capabilities=[["gpu"]])]
    return kwargs


def _explain(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def _unreachable(exc: Exception) -> EngineUnavailable:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    text = str(exc)
    if "FileNotFoundError" in text or "No such file" in text:
        why = "no engine socket there"
    elif "Permission denied" in text or "PermissionError" in text:
        return EngineUnavailable(f"Docker engine at {host}: permission denied", "add your user to the docker group, or run as root")
    elif "refused" in text:
        why = "connection refused"
    elif isinstance(exc, requests.exceptions.Timeout) or "timed out" in text.lower():
        why = "timed out"
    else:
        why = _explain(exc)
    return EngineUnavailable(f"Docker engine not reachable at {host} ({why})", ENGINE_HINT)


def _translate(exc: Exception) -> Exception:
    """The runner error for an exception raised by docker-py or requests."""
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return _unreachable(exc)
    if isinstance(exc, docker.errors.NotFound):
        return ContainerNotFound(_explain(exc))
    msg = _explain(exc)
    if isinstance(exc, docker.errors.APIError) and any(s in msg for s in _GPU_ERRORS):
        return GpuUnavailable(f"GPUs requested but the Docker engine has no GPU runtime ({msg})",
                              "install the NVIDIA Container Toolkit, or set container.gpus: 0")
    return LaunchError(f"Docker error: {msg}")


class DockerBackend:
    """Backend implementation for a local (or DOCKER_HOST) Docker engine."""

    remote = False  # containers run on this engine's machine

    def __init__(self, client: Any = None, timeout: float = 60):
        if client is None:
            try:
                client = docker.from_env(timeout=int(timeout))
            except docker.errors.DockerException as exc:
                raise _unreachable(exc) from None
        self.client = client
        self.api = client.api

    def _call(self, fn, *args, **kwargs):
        """Run an SDK call, translating docker's and requests' exceptions."""
        try:
            return fn(*args, **kwargs)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _translate(exc) from None

    def ping(self) -> None:
        self._call(self.client.ping)

    def live_restore(self) -> bool | None:
        try:
            return bool(self._call(self.api.info).get("LiveRestoreEnabled"))
        except RunnerError:
            return None

    def check_image(self, image: str) -> None:
        try:
            self._call(self.client.images.get, image)
        except ContainerNotFound:
            raise ImageMissing(f"image {image!r} not found on this Docker engine", BUILD_HINT) from None

    def launch(self, plan: LaunchPlan) -> str:
        try:
            container = self.client.containers.create(**create_kwargs(plan))
        except docker.errors.ImageNotFound:
            raise ImageMissing(f"image {plan.image!r} not found on this Docker engine", BUILD_HINT) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise LaunchError(f"a container named {plan.container_name} already exists: this phase was launched before") from None
            raise _translate(exc) from None
        faults.point("created")
        try:
            self._call(container.start)
        except Exception:
            # It never ran: remove it so a retry can reuse the name.
            try:
                container.remove(force=True)
            except docker.errors.DockerException:
                pass
            raise
        return container.id

    def inspect(self, container_id: str) -> ContainerState:
        attrs = self._call(self.api.inspect_container, container_id)
        state = attrs.get("State", {})
        return ContainerState(
            id=attrs["Id"],
            name=attrs.get("Name", "").lstrip("/"),
            status=state.get("Status", "unknown"),
            running=bool(state.get("Running")),
            exit_code=state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None,
            oom_killed=bool(state.get("OOMKilled")),
            started_at=state.get("StartedAt"),
            finished_at=state.get("FinishedAt"),
            error=state.get("Error", ""),
            labels=attrs.get("Config", {}).get("Labels") or {},
        )

    def stop(self, container_id: str, grace: float) -> None:
        try:
            # docker-py adds the grace period to the HTTP timeout for this call.
            self._call(self.api.stop, container_id, timeout=max(0, int(round(grace))))
        except EngineUnavailable:
            # A read timeout while the engine waits out the grace period: make sure it ends.
            if self.inspect(container_id).running:
                self._call(self.api.kill, container_id)

    def logs(self, container_id: str, follow: bool = False, since: int | None = None) -> Iterator[bytes]:
        extra = {} if since is None else {"since": since}
        stream = self._call(self.api.logs, container_id, stream=True, follow=follow, stdout=True, stderr=True, **extra)
        try:
            for chunk in stream:
                yield chunk
        except (requests.exceptions.ConnectionError, docker.errors.DockerException):
            return  # the stream ended with the container or the engine; callers re-inspect

    def find(self, labels: Mapping[str, str | None]) -> list[ContainerState]:
        filters = {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}
        found = self._call(self.client.containers.list, all=True, sparse=True, filters=filters)
        return [self.inspect(c.id) for c in found]

    def remove(self, container_id: str) -> None:
        self._call(self.api.remove_container, container_id, force=True)
