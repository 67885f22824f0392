"""`mllm4d curate --engine ray` on a local Ray instance (one per module, 2 CPUs): annotations are
byte-identical to the single-process run, and a driver killed midway is re-run into the clips it
had not finished only (receipts in curate_state/, mllm4d_lite/curation/receipts.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm4d_lite.curation import curate

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # a local Ray start alone takes ~10 s on 2 cores

REPO = Path(__file__).resolve().parent.parent
CLIPS = ("synth_s00000", "synth_s00001", "synth_s00002")


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module; the tests' drivers join it (a fresh start is ~10 s)."""
    # loopback address: the tests may not open non-loopback sockets (conftest)
    ctx = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                   logging_level="WARNING", configure_logging=False)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_clips")
    for name in CLIPS:
        shutil.copytree(REPO / "tiny_data" / name, root / name)
    return root


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> dict[str, bytes]:
    """The single-process run's annotation bytes per file name."""
    out = tmp_path_factory.mktemp("ref")
    assert curate.main(["--clips", str(clips), "--out", str(out), "--qa", "false"]) == 0
    return {p.name: p.read_bytes() for p in sorted((out / "annotations").glob("*.json"))}


def _annotations(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "annotations").glob("*.json"))}


def test_ray_annotations_are_byte_identical_to_one_process(ray_address, clips, reference, tmp_path, capsys):
    out = tmp_path / "ray"
    rc = curate.main(["--clips", str(clips), "--out", str(out), "--engine", "ray", "--ray-address", ray_address,
                      "--qa", "false"])
    assert rc == 0
    assert sorted(reference) == [f"{c}.json" for c in CLIPS]
    assert _annotations(out) == reference
    assert len(list((out / "curate_state").glob("*.json"))) == len(CLIPS)
    assert "3/3 clips" in capsys.readouterr().out


def _idle(total_cpus: float, timeout_s: float = 30.0) -> None:
    """Wait until the killed driver's tasks are gone (Ray frees their CPUs)."""
    end = time.time() + timeout_s
    while time.time() < end:
        if ray.available_resources().get("CPU", 0) >= total_cpus:
            return
        time.sleep(0.2)
    raise AssertionError("the killed driver's Ray tasks did not end")


def test_killed_ray_run_redoes_only_the_missing_clips(ray_address, clips, reference, tmp_path, capsys):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mllm4d_lite", "curate", "--clips", str(clips), "--out", str(out),
           "--engine", "ray", "--ray-address", ray_address, "--qa", "false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.time() + 60
    while time.time() < end and driver.poll() is None and not list((out / "annotations").glob("*.json")):
        time.sleep(0.05)
    assert driver.poll() is None, f"the driver ended before any clip: {driver.stderr.read().decode()[-2000:]}"
    assert list((out / "annotations").glob("*.json")), "no annotation within 60 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    _idle(ray.cluster_resources()["CPU"])

    receipts = list((out / "curate_state").glob("*.json"))
    done = {p.name: p.stat().st_mtime_ns for p in (out / "annotations").glob("*.json")}
    assert 1 <= len(receipts) < len(CLIPS), "the kill should leave finished and missing clips"
    assert len(done) >= len(receipts)

    rc = curate.main(["--clips", str(clips), "--out", str(out), "--engine", "ray", "--qa", "false"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "3/3 clips" in summary and f"({len(receipts)} reused from an earlier run)" in summary
    after = {p.name: p.stat().st_mtime_ns for p in (out / "annotations").glob("*.json")}
    with_receipt = {p.name for p in (out / "annotations").glob("*.json")
                    if done.get(p.name) == after[p.name]}
    assert len(with_receipt) >= len(receipts)  # the finished clips were not written again
    assert len(after) == len(CLIPS) and _annotations(out) == reference
