"""nvidia-smi missing, failing or printing something odd: one clear sentence, never a traceback.

A fake nvidia-smi (a shell script) on PATH stands in for the real one."""
import pytest

from runner import nvidia, preconditions
from runner.errors import RunnerError
from runner.server.scheduler import detect_gpus
from runner.spec.watch_models import Precondition

FAILS = "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9"


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """Put a fake nvidia-smi running ``body`` (or none) alone on PATH."""

    def install(body: str | None) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        if body is not None:
            exe = tmp_path / "nvidia-smi"
            exe.write_text("#!/bin/sh\n" + body + "\n")
            exe.chmod(0o755)

    return install


def gpu_check(tmp_path, gpus):
    return preconditions.check(Precondition.model_validate({"gpu_memory_free": {"at_least": "20g"}}),
                               preconditions.resolver(tmp_path), gpus=gpus)


@pytest.mark.parametrize("body,inventory,precondition", [
    (None, "nvidia-smi not found: no GPUs", "no NVIDIA GPU visible on this host (nvidia-smi not found)"),
    (FAILS, "nvidia-smi failed (exit code 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
     "nvidia-smi failed (exit code 9): NVIDIA-SMI has failed because it couldn't communicate"),
    ("echo 'No devices were found' >&2; exit 6", "nvidia-smi failed (exit code 6): No devices were found",
     "nvidia-smi failed (exit code 6): No devices were found"),
    ("exit 0", "nvidia-smi: 0 GPU(s)", "gpu_memory_free: no GPUs (need 20.0 GiB on 1)"),
    ("printf 'GPU-0, oops\\n'", "nvidia-smi printed 'GPU-0, oops', expected index", "nvidia-smi reports GPU GPU-0 free memory as 'oops'"),
    ("printf 'x\\n'", "nvidia-smi printed 'x' as a GPU index", "nvidia-smi printed 'x', expected index, memory.free"),
    ("printf '0, [N/A]\\n'", "nvidia-smi printed '0, [N/A]', expected index", "reports GPU 0 free memory as '[N/A]'"),
])
def test_inventory_and_precondition_say_what_went_wrong(smi, tmp_path, body, inventory, precondition):
    smi(body)
    ids, source = detect_gpus()
    assert ids == [] and inventory in source
    ok, why = gpu_check(tmp_path, 1)
    assert not ok and precondition in why


def test_a_working_nvidia_smi(smi, tmp_path):
    smi("case \"$1\" in *memory*) printf '0, 1000\\n1, 30000\\n' ;; *) printf '0\\n1\\n' ;; esac")
    assert detect_gpus() == (["0", "1"], "nvidia-smi: 2 GPU(s)")
    assert nvidia.free_memory() == [(0, 1000 * 2**20), (1, 30000 * 2**20)]
    assert gpu_check(tmp_path, ("1",))[0] and not gpu_check(tmp_path, ("0",))[0]


def test_a_hanging_nvidia_smi_is_cut_short(smi, monkeypatch):
    smi("exec /bin/sleep 5")
    monkeypatch.setattr(nvidia, "TIMEOUT_S", 0.2)
    with pytest.raises(RunnerError, match="nvidia-smi did not answer within 0.2 s"):
        nvidia.indexes()


def test_ids_nvidia_smi_does_not_report_are_named(smi, tmp_path):
    smi("printf '0, 30000\\n'")
    ok, why = gpu_check(tmp_path, ("0", "GPU-8f3c"))
    assert not ok and why == "gpu_memory_free: nvidia-smi reports no GPU GPU-8f3c (it reports 0)"
