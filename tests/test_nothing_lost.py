"""Nothing lost: a failed write (disk full) keeps the previous file and names the path; a sweep dir
is locked against a second writer (a stale lock is taken over); a finished run is skipped only for
its own config (``config_sha256``); Ctrl-C is one line and exit 130."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from harness import interrupt
from harness import run_dir as rd
from traces import cli as trace_cli

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk(*args, **kwargs):
    raise ENOSPC


def test_write_atomic_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old\n")
    monkeypatch.setattr(Path, "write_text", _full_disk)
    with pytest.raises(rd.WriteError) as exc:
        rd.write_atomic(target, "new\n")
    monkeypatch.undo()
    assert str(target) in str(exc.value) and "No space left on device" in str(exc.value)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_kvflow_trace_output_on_a_full_disk(tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.jsonl.gz"
    assert trace_cli.main(["generate", "sequential", "runs=1", "-o", str(out)]) == 0
    before = out.read_bytes()

    def half_written(trace, path):
        Path(path).write_bytes(before[:10])  # the truncated file a full disk leaves
        raise ENOSPC

    monkeypatch.setattr(trace_cli, "write_trace", half_written)
    capsys.readouterr()
    assert trace_cli.main(["generate", "sequential", "runs=2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kvflow-trace: error: {out}: cannot write (No space left on device)"), err
    assert "\n" not in err and out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_report_plot_on_a_full_disk_keeps_the_previous_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from analysis import plots

    png = tmp_path / "speedup.png"
    png.write_bytes(b"previous plot")
    monkeypatch.setattr(Figure, "savefig", _full_disk)
    with pytest.raises(rd.WriteError, match=re.escape(str(png))):
        plots._save(Figure(), png)
    assert png.read_bytes() == b"previous plot" and [p.name for p in tmp_path.iterdir()] == ["speedup.png"]


def _hold_lock(directory: str, ready, release) -> None:
    rd.lock_dir(Path(directory))
    ready.set()
    release.wait(30)
    rd.unlock_dir(Path(directory))


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(rd.RunError, match=rf"another sweep \(pid {holder.pid}\) is writing"):
            rd.lock_dir(tmp_path)
    finally:
        release.set()
        holder.join(30)
    rd.lock_dir(tmp_path)  # released: ours now
    rd.unlock_dir(tmp_path)
    assert not (tmp_path / rd.LOCK).exists()


def _race(directory: str, start, results) -> None:
    start.wait(30)
    try:
        rd.lock_dir(Path(directory))
        results.put("won")
        time.sleep(1.0)  # hold it while the others try
    except rd.RunError:
        results.put("refused")


def test_concurrent_lockers_exactly_one_wins(tmp_path):
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    outcomes = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    assert outcomes == ["refused"] * 3 + ["won"]


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / rd.LOCK).write_text(f"{dead.pid}\n7\n")
    rd.lock_dir(tmp_path, total_runs=3)
    assert (tmp_path / rd.LOCK).read_text().split() == [str(os.getpid()), "3", rd.HOST]
    assert rd.lock_total(tmp_path) == 3
    rd.unlock_dir(tmp_path)


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    """On a shared filesystem a pid of another host looks dead here: the lock must stand (a second
    sweep from another machine into the same directory is refused, naming the host)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / rd.LOCK).write_text(f"{dead.pid}\n2\nother-node-7\n")
    with pytest.raises(rd.RunError, match="on host other-node-7"):
        rd.lock_dir(tmp_path)
    assert (tmp_path / rd.LOCK).read_text().splitlines()[2] == "other-node-7"
    rd.lock_dir(tmp_path, "kvflow-sim run", other_hosts_hold=False)  # a run lock: a retry on another node
    assert (tmp_path / rd.LOCK).read_text().splitlines()[::2] == [str(os.getpid()), rd.HOST]
    rd.unlock_dir(tmp_path)


def test_temp_files_of_a_killed_writer_are_removed_when_the_lock_is_taken(tmp_path):
    """A SIGKILL mid-write leaves ``.NAME.PID.tmpSUFFIX``; the next run in that directory removes it
    (its pid is dead), and leaves a live writer's temp file and other hidden files alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".summary.json.{dead.pid}.tmp.json"
    live = tmp_path / f".requests.csv.{os.getppid()}.tmp.csv"
    other = tmp_path / ".hydra"
    for path in (stale, live):
        path.write_text("half")
    other.mkdir()
    rd.lock_dir(tmp_path)
    rd.unlock_dir(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()


def _minimal_run(run_dir: Path, config: dict) -> None:
    from harness.summary import DETAIL_KEYS, SUMMARY_KEYS

    summary = {k: 0 for k in SUMMARY_KEYS} | {"policy": "kvflow", "backend": "sim", "params": {}}
    summary["details"] = {k: 0 for k in DETAIL_KEYS}
    rd.write_run_dir(run_dir, rd.with_config_hash(summary, config), [], [], config)


def test_finished_run_is_recognised_only_for_its_config(tmp_path):
    config = {"seed": 0, "workload": {"name": "default", "params": {"runs": 3}}, "force": False}
    _minimal_run(tmp_path, config)
    stored = json.loads((tmp_path / rd.SUMMARY).read_text())[rd.CONFIG_HASH]
    assert stored == rd.config_hash(config)
    assert rd.should_skip(tmp_path, config)
    assert rd.should_skip(tmp_path, {**config, "force": True, "output": {"table": False}})  # changes nothing
    assert not rd.should_skip(tmp_path, {**config, "seed": 1})
    assert not rd.should_skip(tmp_path, {**config, "workload": {"name": "default", "params": {"runs": 4}}})
    assert not rd.should_skip(tmp_path, config, force=True)
    (tmp_path / rd.CONFIG).write_text("seed: 99\n")  # the hash, not an editable file, decides
    assert rd.should_skip(tmp_path, config)


SIM = [sys.executable, "-c", "from sim.cli import main; main()"]
SMALL = ["workload.params.runs=1", "workload.params.agents=4", "output.table=false", "output.report=false"]


def test_a_second_sweep_into_a_locked_sweep_dir_refuses(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sweep = tmp_path / "sweep"
        sweep.mkdir()
        (sweep / rd.LOCK).write_text(f"{holder.pid}\n2\n")
        args = [*SIM, "-m", "policy=kvflow,sglang", *SMALL, f"hydra.sweep.dir={sweep}"]
        p = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert p.returncode == 2, p.stderr
        assert f"another sweep (pid {holder.pid}) is writing into this directory" in p.stderr
        assert "Traceback" not in p.stderr and not list(sweep.rglob(rd.SUMMARY))
    finally:
        holder.kill()
        holder.wait()
    p = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)  # stale now: taken over
    assert p.returncode == 0, p.stderr
    assert len(list(sweep.rglob(rd.SUMMARY))) == 2 and not (sweep / rd.LOCK).exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    sweep = tmp_path / "sweep"
    policies = "policy=kvflow,sglang,hicache,clairvoyant,kvflow_evict_only,kvflow_inferred"
    args = [*SIM, "-m", policies, "workload=concurrent", *SMALL[2:], f"hydra.sweep.dir={sweep}"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 90
    while time.time() < deadline and not list(sweep.rglob(rd.SUMMARY)):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"interrupted; \d of 6 runs complete \({re.escape(str(sweep))}\); rerun the same command to resume", last
    )
    assert "Traceback" not in err


def _sigint_turned_into(error: Exception):
    """What OmegaConf did in CI: the Ctrl-C landed in its flag_override ``__exit__``, which then
    failed with its own error (ConfigCompositionException, or a raw AttributeError)."""

    def app() -> None:
        try:
            interrupt._on_sigint(signal.SIGINT, None)
        except KeyboardInterrupt as exc:
            raise error from exc

    return app


@pytest.mark.parametrize("error", [ConfigCompositionException(), AttributeError("'NoneType' object has no attribute")])
def test_ctrl_c_that_a_library_turns_into_its_own_error_is_still_exit_130(monkeypatch, capsys, error):
    import sim.cli as sim_cli

    monkeypatch.setattr(interrupt, "_received", False)
    monkeypatch.setattr(interrupt, "watch", lambda: None)
    monkeypatch.setattr(sim_cli, "_app", _sigint_turned_into(error))
    with pytest.raises(SystemExit) as exit_:
        sim_cli.main()
    assert exit_.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted; ")


def test_an_error_without_a_ctrl_c_is_still_an_error(monkeypatch, capsys):
    import sim.cli as sim_cli

    monkeypatch.setattr(interrupt, "_received", False)
    monkeypatch.setattr(interrupt, "watch", lambda: None)

    def app() -> None:
        raise ConfigCompositionException("bad override")

    monkeypatch.setattr(sim_cli, "_app", app)
    with pytest.raises(SystemExit) as exit_:
        sim_cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "kvflow-sim: error: bad override"


def test_ctrl_c_while_the_entry_point_imports_is_one_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "slow_cli.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(interrupt, "watch", lambda: None)
    with pytest.raises(SystemExit) as exit_:
        interrupt.launch("slow_cli", "kvflow-sim")
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == "kvflow-sim: interrupted while starting; nothing was run or written"
