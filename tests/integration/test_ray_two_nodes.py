"""The kk-tiny recipe on a two-node Ray cluster on this machine: rollout workers on one node, the
learner on the other (needs `pip install ray`; about 2 minutes on 2 busy cores).

Two raylets are started as on two real machines (`ray start --head`, then `ray start --address`),
each with its own custom resource: the head node {"learner": 1} and 1 CPU, the second node
{"rollout": 2} and 2 CPUs. `rlvr run` joins that cluster as a user's driver does (ray.address=auto,
the address in RAY_ADDRESS) with ray.resources_per_worker={rollout: 1} and
ray.resources_per_learner={learner: 1}. The node ids the run records in summary.json's "placement"
(each actor reports its own) are checked against the cluster's nodes as Ray lists them from
another process: both rollout workers on the rollout node, the learner rank on the other one.

The cluster is private to the test: its own temp dir and port, and its own authentication token
(Ray 2.60's `ray start --head` turns token authentication on; a node or driver joining it needs
RAY_AUTH_MODE=token and the token). `ray stop` would stop every Ray instance on the machine, so the
finalizer ends the processes the two `ray start` commands started, by their ids.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None:  # an optional extra; a ray that is installed but broken fails
    pytest.skip("ray is not installed (optional extra: pip install 'rlvr[ray]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "kk-tiny.yaml"
RAY_CLI = Path(sys.executable).with_name("ray")
WORKERS, RL_STEPS = 2, 2
SHRINK = [
    "threads=1", "sft.enabled=false", "data.train_size=100", "data.eval_size=8",  # RL from the initial model
    f"rl.steps={RL_STEPS}", "rl.prompts_per_step=2", "rl.mini_batches=1", "rl.group_size=2",
    "rl.max_new_tokens=32", "rl.length_reward.kind=overlong", "rl.length_reward.cache_tokens=32",
    "eval.max_new_tokens=32", "eval.samples=1", "eval.every=0", "logging.progress=false",
    "logging.samples_every=0", "checkpoint.every=0",
]
PLACED = ["distributed=ray", "ray.address=auto", f"ray.num_rollout_workers={WORKERS}", "ray.num_learners=1",
          "ray.resources_per_worker={rollout: 1}", "ray.resources_per_learner={learner: 1}"]


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    nodes: dict[str, dict[str, float]]
    """Alive node id -> its resources, as Ray lists them to a separate driver."""

    def node_with(self, resource: str) -> str:
        (node,) = [n for n, res in self.nodes.items() if res.get(resource, 0) > 0]
        return node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_start(args: list[str], env: dict[str, str], groups: list[int]) -> str:
    """`ray start ARGS` in a new session (its daemons stay in that process group); returns its output."""
    proc = subprocess.Popen([str(RAY_CLI), "start", *args, "--object-store-memory=100000000",
                             "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    groups.append(proc.pid)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"ray start {' '.join(args)} failed:\n{out[-4000:]}"
    return out


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process on the machine (zombies left out)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True, text=True,
                         check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, pgid, stat = line.split()[:4]
        if not stat.startswith("Z"):
            table[int(pid)] = (int(ppid), int(pgid))
    return table


def end_processes(groups: list[int]) -> None:
    """SIGTERM, then SIGKILL, to the processes of these groups and their descendants (Ray's worker
    processes start their own sessions, under the raylet)."""
    table = processes()
    ours = {pid for pid, (_, pgid) in table.items() if pgid in groups}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in ours} - ours
        ours |= children
        grew = bool(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ours & set(processes()):
            time.sleep(0.5)


def list_nodes(address: str, env: dict[str, str]) -> dict[str, dict[str, float]]:
    code = ("import json, ray; ray.init(address='auto', log_to_driver=False); "
            "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))")
    done = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_ADDRESS": address},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="rlvr-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p))
    groups: list[int] = []
    try:
        head = ray_start(["--head", f"--port={free_port()}", "--num-cpus=1", '--resources={"learner": 1}',
                          f"--temp-dir={temp_dir}", "--include-dashboard=false"], env, groups)
        found = re.search(r"ray start --address='([^']+)'", head)
        assert found, f"no address in the output of ray start --head:\n{head[-4000:]}"
        address = found.group(1)
        ray_start([f"--address={address}", f"--num-cpus={WORKERS}", f'--resources={{"rollout": {WORKERS}}}'],
                  env, groups)
        nodes = list_nodes(address, env)
        assert len(nodes) == 2, nodes
        yield Cluster(address, env, nodes)
    finally:
        end_processes(groups)
        shutil.rmtree(temp_dir, ignore_errors=True)


def rlvr_run(cluster: Cluster, out_dir: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rlvr.cli", "run", str(RECIPE), f"out_dir={out_dir}",
               f"model.path={model_dir}", *SHRINK, *extra]
    return subprocess.run(command, env={**cluster.env, "RAY_ADDRESS": cluster.address}, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_rollout_workers_and_learner_run_on_the_nodes_holding_their_resources(cluster,
                                                                              tiny_model_dir, tmp_path):
    rollout_node, learner_node = cluster.node_with("rollout"), cluster.node_with("learner")
    assert rollout_node != learner_node
    t0 = time.perf_counter()
    done = rlvr_run(cluster, tmp_path / "run", tiny_model_dir, *PLACED)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    log = done.stdout + done.stderr
    print(f"rlvr run on the two-node cluster: {time.perf_counter() - t0:.1f} s;",
          *[line for line in log.splitlines() if "ray placement" in line])

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    where = summary["placement"]
    assert [w["node_id"] for w in where["rollout_workers"]] == [rollout_node] * WORKERS
    assert [r["node_id"] for r in where["learners"]] == [learner_node]
    assert where["driver"]["node_id"] in cluster.nodes
    entries = [where["driver"], *where["rollout_workers"], *where["learners"]]
    assert len({e["pid"] for e in entries}) == len(entries)  # each actor is its own process
    assert {e["hostname"] for e in entries} == {socket.gethostname()}  # both nodes are this machine
    assert "ray placement: node " in log

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r.get("phase") == "rl"]
    assert [r["step"] for r in rl_rows] == list(range(1, RL_STEPS + 1))
    for r in rl_rows:  # the learner actor really updated: its statistics reached the driver's log
        assert math.isfinite(r["actor/grad_norm"]) and r["actor/grad_norm"] > 0
        assert r["rollout/group_size"] == 2 and r["num_groups"] == 2
    assert summary["rl_steps_done"] == RL_STEPS


@pytest.mark.slow
def test_a_resource_no_node_has_is_refused_before_the_run_starts(cluster, tiny_model_dir, tmp_path):
    placed = [o for o in PLACED if not o.startswith("ray.resources_per_worker")] + [
        "ray.resources_per_worker={rollot: 1}"]
    done = rlvr_run(cluster, tmp_path / "run", tiny_model_dir, *placed)
    assert done.returncode != 0
    assert "ray.resources_per_worker reserve 'rollot', which no node of the Ray cluster" in done.stderr
    assert "rollout 2" in done.stderr  # what the cluster does have
    assert not (tmp_path / "run").exists()  # stopped before the run directory was written
