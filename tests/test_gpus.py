"""GPUs in the sandboxes: handed over only when the user asks (``gpus``), never by a
repository; bubblewrap binds the NVIDIA device files and nothing else of the host's /dev,
Docker asks its engine for the GPUs the way ``docker run --gpus all`` does."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from bakeoff.agent.config import ConfigError, load_settings
from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.agent.session import make_pool
from bakeoff.sandboxes import local as local_module
from bakeoff.sandboxes.local import LocalSandbox
from bakeoff.sandboxes.local_isolation import bwrap_argv, bwrap_status, gpu_devices


def test_the_nvidia_device_files_are_found_and_nothing_else(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "null", "dri"):
        (tmp_path / name).touch()
    (tmp_path / "nvidia-caps").mkdir()  # a folder of capability files, not a device
    assert gpu_devices(tmp_path) == [str(tmp_path / n) for n in ("nvidia-uvm", "nvidia0", "nvidiactl")]


def test_bwrap_binds_the_gpus_only_when_given() -> None:
    plain = bwrap_argv(work=Path("/w"), home=Path("/h"), tmp=Path("/t"), chdir="/workspace")
    with_gpus = bwrap_argv(work=Path("/w"), home=Path("/h"), tmp=Path("/t"), chdir="/workspace",
                           gpus=["/dev/nvidia0", "/dev/nvidiactl"])
    assert "--dev-bind" not in plain
    at = with_gpus.index("--dev")  # after the fresh /dev, so it is not hidden by it
    assert with_gpus[at + 2:at + 8] == ["--dev-bind", "/dev/nvidia0", "/dev/nvidia0",
                                        "--dev-bind", "/dev/nvidiactl", "/dev/nvidiactl"]


async def test_a_sandbox_sees_the_device_files_only_with_gpus_on(tmp_path: Path, monkeypatch) -> None:
    """A real character device (the kernel's ``null``, under a made-up name in /dev/shm) stands
    for a GPU: bwrap's fresh /dev does not have it unless the sandbox was asked for GPUs."""
    assert bwrap_status()[0], bwrap_status()[1]  # the suite's machines have bubblewrap (make test installs it)
    node = Path(f"/dev/shm/bk-nvidia-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(local_module, "gpu_devices", lambda: [str(node)])
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        seen = {}
        for gpus in (False, True):
            sb = await LocalSandbox.create(Workspace(path=tmp_path), SandboxLimits(gpus=gpus))
            try:
                r = await sb.exec(f"test -c {node} && echo device || echo none")
            finally:
                await sb.close()
            seen[gpus] = r.stdout.strip()
        assert seen == {False: "none", True: "device"}
    finally:
        node.unlink(missing_ok=True)


def test_docker_asks_its_engine_for_the_gpus_only_when_given() -> None:
    import docker  # a dependency of bakeoff's, never missing

    from bakeoff.sandboxes.docker_backend import _hardened_host_config, _limits_key

    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.43")  # never connects
    plain = _hardened_host_config(api, SandboxLimits(), {})
    gpus = _hardened_host_config(api, SandboxLimits(gpus=True), {})
    assert "DeviceRequests" not in plain
    assert gpus["DeviceRequests"] == [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                       "Options": {}}]
    assert _limits_key(SandboxLimits()) != _limits_key(SandboxLimits(gpus=True))  # warm containers are not shared


def _repo(tmp_path: Path, config: str = "") -> Path:
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    if config:
        (repo / "bakeoff.toml").write_text(config)
    return repo


def test_gpus_are_the_users_choice_not_a_repositorys(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    assert load_settings(_repo(tmp_path), environ=env)[0].gpus is False
    with pytest.raises(ConfigError, match="gpus = true would let the candidates reach this machine's GPUs"):
        load_settings(_repo(tmp_path / "hostile", "gpus = true\n"), environ=env)
    settings, sources = load_settings(_repo(tmp_path / "env"), environ={**env, "BAKEOFF_GPUS": "1"})
    assert settings.gpus is True and make_pool(settings).limits == SandboxLimits(gpus=True)
    settings, _ = load_settings(_repo(tmp_path / "flag"), flags={"gpus": True}, environ=env)
    assert settings.gpus is True
    assert make_pool(load_settings(_repo(tmp_path / "off"), environ=env)[0]).limits is None
