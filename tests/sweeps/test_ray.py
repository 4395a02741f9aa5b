"""The Ray executor on a real two-node Ray cluster on this machine (a head and a second node,
`ray.cluster_utils.Cluster`): a sweep's tasks land on both nodes and give what the local executor
gives."""

from __future__ import annotations

import pytest

from lottery.cli.main import main
from lottery.core import layout
from lottery.core.storage import read_json
from tests.sweeps.test_sweep import files, write_sweep

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.slow


def test_without_an_address_the_sweep_starts_ray_here_for_its_duration(
    tmp_path, capsys, monkeypatch
):
    """Runs before the module's cluster exists: no Ray runs here, and none is named."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    sweep = write_sweep(tmp_path / "s.json", grid={"seed": [0, 1]})
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--executor", "ray"]) == 0
    assert "2 of 2 points done" in capsys.readouterr().out
    jobs = [read_json(out / layout.SWEEP_STATUS / f"seed={s}.json")["job"] for s in (0, 1)]
    assert {j["executor"] for j in jobs} == {"ray"}
    assert not ray.is_initialized()  # the instance it started is gone with the sweep


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_a_sweep_on_a_two_node_ray_cluster_uses_both_and_equals_local(cluster, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.json", grid={"seed": [0, 1, 2, 3]})
    out = tmp_path / "ray_out"
    argv = [
        "sweep",
        str(sweep),
        "--out",
        str(out),
        "--executor",
        "ray",
        "--address",
        cluster.address,
    ]
    assert main(argv) == 0
    assert "4 of 4 points done" in capsys.readouterr().out
    names = [f"seed={s}" for s in range(4)]
    jobs = [read_json(out / layout.SWEEP_STATUS / f"{n}.json")["job"] for n in names]
    assert {j["executor"] for j in jobs} == {"ray"}
    assert len({j["node"] for j in jobs}) == 2  # tasks ran on the head and on the joined node
    local = tmp_path / "local_out"
    assert main(["sweep", str(sweep), "--out", str(local), "--threads", "1"]) == 0
    for n in names:
        assert files(out / n) == files(local / n)
    # a rerun finds every point done and starts no task
    assert main(argv) == 0
    assert "(4 before this run)" in capsys.readouterr().out
