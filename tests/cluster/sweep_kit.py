"""Helpers of the cluster suite: run a ``kvflow-sim -m`` sweep under a launcher in its own session,
clean up every process it left (by id), start a loopback-only Ray head, and compare run dirs."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# paper_single, one setting, 2 output lengths x 2 policies: 4 runs of well under a second each
SWEEP = [
    "experiment=paper_single",
    "setup=a10g_llama8b",
    "workload.params.fixed_tokens=4096",
    "workload.params.output_tokens=32,256",
    "policy=hicache,kvflow",
    "output.table=false",
]
SWEEP_JOBS = 4
# 3 runs of which job 1 simulates for seconds: time to kill its worker mid-run
SLOW = [*SWEEP[:4], "workload.params.output_tokens=32", "workload.params.runs=10,400,20", "policy=kvflow", SWEEP[-1]]
SLOW_JOBS = 3
# the run-directory contract's files (docs/architecture.md) plus the Hydra files that do not name the
# launcher; .hydra/hydra.yaml (launcher config, sweep dir) and cli.log (timestamps) differ by design
CONTRACT = (
    "config.yaml",
    "requests.csv",
    "workflows.csv",
    "timeline.csv",
    "summary.json",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
)
EXPECTED_OTHERS = {".hydra/hydra.yaml", "cli.log", ".kvflow.lock"}
WALL_KEYS = ("wall_s",)  # the only non-deterministic summary key (harness/summary.py)
TIMEOUT_S = 240

# One token for every Ray process of this run (Ray 2.60 turns token auth on by default; a client
# must send the head's token); loopback only (a single-node cluster never needs another address).
ENV = {
    **os.environ,
    "CI": "1",
    "PYTHONPATH": str(REPO),
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's switch for "use 127.0.0.1 as the node address"
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    "RAY_USAGE_STATS_ENABLED": "0",
}


def launcher_args(name: str, ray_tmp: Path, client_port: int | None = None) -> list[str]:
    """The overrides that select launcher ``name`` (as docs/sweeps.md writes them)."""
    if name == "basic":
        return ["hydra/launcher=basic"]
    if name == "ray":
        return [
            "hydra/launcher=ray",
            "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false",
            f"+hydra.launcher.ray.init._temp_dir={ray_tmp}",
        ]
    if name == "ray_client":
        assert client_port is not None
        return [
            "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address=ray://127.0.0.1:{client_port}",
            "+hydra.launcher.ray.init.object_store_memory=null",  # the launcher's default is refused by a running cluster
        ]
    if name == "submitit_local":
        return ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    raise ValueError(name)


# ----- processes ----------------------------------------------------------------------------------
def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a sweep started with ``start_new_session``), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def end_session(sid: int, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process left in session ``sid``, one by one by id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.1)


@dataclass
class Result:
    returncode: int
    output: str


def start_sweep(args: list[str], sweep_dir: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = TIMEOUT_S) -> Result:
    """Wait for a sweep; whatever it leaves behind in its session is ended."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        end_session(proc.pid, grace_s=2)
        out, _ = proc.communicate()
        out += f"\n[timed out after {timeout_s} s]"
    finally:
        end_session(proc.pid)
    return Result(proc.returncode, out)


def sweep(args: list[str], sweep_dir: Path, cwd: Path) -> Result:
    return finish(start_sweep(args, sweep_dir, cwd))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


START_TIMEOUT_S = 120  # for ``ray start --head`` to return, then for its client server's port


@contextmanager
def ray_head(tmp: Path) -> Iterator[int]:
    """A Ray head on 127.0.0.1 (2 CPUs, no dashboard) with a Ray client server; yields its port.

    Started the way docs/sweeps.md tells users to (``ray start --head``, daemonized). Ray 2.60's
    client proxy forks each per-client server from a process with live gRPC threads, and the child
    can die of SIGSEGV before it execs (ray-project/ray#63202, open; empty
    ``ray_client_server_<port>.err``, "Starting Ray client server failed"): timing-dependent, seen
    here more often under ``--block`` and on a loaded host, not cured by dropping it (the test
    reruns a sweep once on that signature: ``crashed_client_servers``). The daemons
    keep the session of the ``ray start`` process, so ending that session by id stops them all."""
    port, client_port = free_port(), free_port()
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--port={port}",
        f"--ray-client-server-port={client_port}",
        "--object-store-memory=78643200",
        f"--temp-dir={tmp}",
        "--disable-usage-stats",
    ]
    log_path = tmp / "head.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                rc = proc.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = None
            if rc != 0:
                raise RuntimeError(f"ray start --head did not start ({rc}): {log_path.read_text()[-2000:]}")
            _wait_for_port(client_port, tmp)
            yield client_port
        finally:
            end_session(proc.pid, grace_s=5)
            proc.poll()


def client_server_logs(tmp: Path) -> str:
    """The tail of every Ray client server log of the head in ``tmp`` (for a failure's message)."""
    parts = []
    for path in sorted(tmp.glob("session_latest/logs/ray_client_server*")):
        text = path.read_text(errors="replace")[-1500:]
        parts.append(f"--- {path.name}\n{text}")
    return "\n".join(parts) or f"(no ray_client_server logs under {tmp})"


RAY_FORK_CRASH = "Starting Ray client server failed"


def crashed_client_servers(tmp: Path) -> list[str]:
    """Per-client Ray servers of the head in ``tmp`` that died before they ran (ray#63202).

    A per-client server that started writes its startup lines to ``ray_client_server_<port>.err``
    at once; one forked by the proxy that died of SIGSEGV before exec leaves that file empty."""
    logs = tmp.glob("session_latest/logs/ray_client_server_[0-9]*.err")
    return sorted(p.name for p in logs if p.stat().st_size == 0)


def _wait_for_port(port: int, tmp: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"Ray client server not up on 127.0.0.1:{port} after {timeout_s} s\n{client_server_logs(tmp)}")


# ----- run directories ----------------------------------------------------------------------------
def contract_bytes(job: Path, rel: str) -> bytes:
    """A contract file as compared across launchers: the summary without its wall-clock keys."""
    data = (job / rel).read_bytes()
    if rel != "summary.json":
        return data
    summary = {k: v for k, v in json.loads(data).items() if k not in WALL_KEYS}
    return json.dumps(summary, sort_keys=True).encode()


def files_in(job: Path) -> set[str]:
    return {str(p.relative_to(job)) for p in job.rglob("*") if p.is_file()}


def check_no_half_written(job: Path, ref_job: Path) -> None:
    """Every contract file present in ``job`` equals the reference's (a truncated or half-written
    file would not); nothing else but Hydra's own files and the lock is there (no temp file)."""
    present = files_in(job)
    unexpected = present - set(CONTRACT) - EXPECTED_OTHERS
    assert not unexpected, f"{job}: unexpected files {sorted(unexpected)}"
    for rel in sorted(present & set(CONTRACT)):
        assert contract_bytes(job, rel) == contract_bytes(ref_job, rel), f"{job / rel} differs from {ref_job / rel}"


def check_same_as(sweep_dir: Path, ref: Path, jobs: int) -> None:
    """Every job of the sweep is complete and its contract files equal the reference sweep's."""
    for i in range(jobs):
        job = sweep_dir / str(i)
        missing = [rel for rel in CONTRACT if not (job / rel).is_file()]
        assert not missing, f"{job}: missing {missing}"
        check_no_half_written(job, ref / str(i))
    assert not (sweep_dir / str(jobs)).exists()


def stamps(sweep_dir: Path, jobs: list[int]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each contract file of ``jobs``: unchanged means not rewritten."""
    out = {}
    for i in jobs:
        for rel in CONTRACT[:5]:
            st = (sweep_dir / str(i) / rel).stat()
            out[f"{i}/{rel}"] = (st.st_ino, st.st_mtime_ns)
    return out


def complete_jobs(sweep_dir: Path, jobs: int) -> list[int]:
    done = []
    for i in range(jobs):
        try:
            json.loads((sweep_dir / str(i) / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        done.append(i)
    return done


def wait_for_lock_pid(job: Path, proc: subprocess.Popen[str], timeout_s: float = 120) -> int:
    """The pid of the process running ``job`` (its run lock), once it has started."""
    lock = job / ".kvflow.lock"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.01)
    raise AssertionError(f"{lock} never appeared (sweep exit {proc.poll()})")
