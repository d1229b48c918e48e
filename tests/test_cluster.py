"""inflection_layers.tools.cluster on a real one-node Slurm (Debian's slurm-wlm + munge) on 127.0.0.1.

The `slurm` fixture installs slurm-wlm and munge when slurmctld is missing and we are root, starts munged,
slurmctld and slurmd in a scratch folder (free ports, so it never meets another cluster), and tears them
down at the end; if Slurm cannot be installed or started the tests fail with the reason. A toy DVC project
(matrix stages, params, a directory output, a `cache: false` last stage, a local-folder remote) keeps the
round trips at seconds; the real study runs on its smoke profile (the committed HEAD) as CI's group does.

    make test-cluster                                   # every test of the group (`pytest -m cluster`)
    pytest -m cluster -k toy tests/test_cluster.py -s   # the toy project only: about 2 minutes
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inflection_layers.tools.cluster import job_state

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
SLURM_CONF = """ClusterName=ci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={R}/munge/munge.socket
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={R}/state
SlurmdSpoolDir={R}/spool/slurmd-%n
SlurmctldPidFile={R}/run/slurmctld.pid
SlurmdPidFile={R}/run/slurmd-%n.pid
SlurmctldLogFile={R}/log/slurmctld.log
SlurmdLogFile={R}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={R}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
MailProg=/bin/true
DependencyParameters=kill_invalid_depend
ReturnToService=2
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost {hardware} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def run(
    *cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its text output; on `check`, fail the test with its output."""
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_slurm() -> None:
    """apt-get install slurm-wlm and munge when slurmctld is missing (root only); else fail with the reason."""
    daemons = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/sbin/mungekey")
    if all(Path(d).exists() for d in daemons) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        pytest.fail("Slurm is not installed and this is not root: apt-get install -y slurm-wlm munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run("apt-get", "install", "-y", "-q", "slurm-wlm", "munge", env=env, timeout=600, check=False).returncode:
        run("apt-get", "update", "-q", env=env, timeout=600)
        run("apt-get", "install", "-y", "-q", "slurm-wlm", "munge", env=env, timeout=600)


def tail(path: Path, lines: int = 20) -> str:
    """A log's last lines, for failure messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"({path} missing)"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running one-node cluster; SLURM_CONF is set for this process and its children. Yields the scratch root."""
    install_slurm()
    r = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "etc", "state", "spool/slurmd-localhost", "log", "run"):
        (r / sub).mkdir(parents=True)
    (r / "munge").chmod(0o755)  # 700 makes non-root sbatch fail: "Munge encode failed"
    key = r / "munge/munge.key"
    run("/usr/sbin/mungekey", "--create", f"--keyfile={key}")
    key.chmod(0o600)
    run(
        "/usr/sbin/munged",
        "--force",
        f"--key-file={key}",
        f"--socket={r}/munge/munge.socket",
        f"--pid-file={r}/munge/munged.pid",
        f"--log-file={r}/munge/munged.log",
        f"--seed-file={r}/munge/munged.seed",
    )
    probe = run("/usr/sbin/slurmd", "-C", env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"}).stdout
    hw = dict(re.findall(r"(\w+)=(\d+)", probe.splitlines()[0]))
    fields = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    hardware = " ".join(f"{k}={hw[k]}" for k in fields)
    conf = r / "etc/slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            R=r, ctld_port=free_port(), slurmd_port=free_port(), hardware=hardware, memory=hw["RealMemory"]
        )
    )  # more than `slurmd -C` drains the node
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        run("/usr/sbin/slurmctld", "-f", str(conf))
        run("/usr/sbin/slurmd", "-f", str(conf), "-N", "localhost")
        deadline = time.monotonic() + 60
        while run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() != "idle":
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the Slurm node never became idle:\n{tail(r / 'log/slurmctld.log')}\n"
                    f"{tail(r / 'log/slurmd-localhost.log')}"
                )
            time.sleep(0.5)
        yield r
    finally:
        run("scancel", f"--user={os.getuid()}", check=False)
        deadline = time.monotonic() + 60
        while run("squeue", "-h", "-t", "R,CG", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
        run("scontrol", "shutdown", check=False)
        stop_daemons(list((r / "run").glob("*.pid")), (0, 15, 9))
        stop_daemons([r / "munge/munged.pid"], (15, 9))
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def stop_daemons(pid_files: list[Path], signals: tuple[int, ...]) -> None:
    """Wait up to 15 s for the processes of these pid files to end after each signal (0: just wait), in turn."""
    pids = [int(p.read_text()) for p in pid_files if p.exists() and p.read_text().strip().isdigit()]
    for sig in signals:
        for pid in pids:
            if sig and alive(pid):
                os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        else:
            return


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie that nobody reaps does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


TOY = {
    "gen.py": """import os, sys, time, yaml
seed = int(sys.argv[1]); p = yaml.safe_load(open("params.yaml"))["gen"]
open(os.environ.get("TOY_RUNLOG", os.devnull), "a").write(f"gen@{seed}\\n")
time.sleep(float(os.environ.get("TOY_SLEEP", 0)))
os.makedirs("data", exist_ok=True)
vals = [(seed * 7 + i) / p[f"divisor_{seed}"] for i in range(p["n"])]
open(f"data/gen-{seed}.txt", "w").write("\\n".join(map(str, vals)) + "\\n")
""",
    "square.py": """import os, sys
seed = int(sys.argv[1])
open(os.environ.get("TOY_RUNLOG", os.devnull), "a").write(f"square@{seed}\\n")
vals = [float(x) for x in open(f"data/gen-{seed}.txt")]
os.makedirs(f"data/sq-{seed}", exist_ok=True)
for i, v in enumerate(vals):
    open(f"data/sq-{seed}/{i}.txt", "w").write(f"{v * v}\\n")
""",
    "combine.py": """import glob, json, os
open(os.environ.get("TOY_RUNLOG", os.devnull), "a").write("combine\\n")
os.makedirs("results", exist_ok=True)
total = sum(float(open(f).read()) for f in sorted(glob.glob("data/sq-*/*.txt")))
json.dump({"total": total}, open("results/total.json", "w"))
""",
    "report.py": """import json, os
open(os.environ.get("TOY_RUNLOG", os.devnull), "a").write("report\\n")
open("report.md", "w").write(f"total {json.load(open('results/total.json'))['total']:.6f}\\n")
""",
    "dvc.yaml": """stages:
  gen:
    matrix:
      seed: ${seeds}
    cmd: python gen.py ${item.seed}
    deps:
      - gen.py
    params:
      - gen.n
      - gen.divisor_${item.seed}
    outs:
      - data/gen-${item.seed}.txt
  square:
    matrix:
      seed: ${seeds}
    cmd: python square.py ${item.seed}
    deps:
      - square.py
      - data/gen-${item.seed}.txt
    outs:
      - data/sq-${item.seed}
  combine:
    cmd: python combine.py
    deps:
      - combine.py
      - data/sq-1
      - data/sq-2
    outs:
      - results/total.json
  report:  # like the study's report: its output is committed to git, not cached
    cmd: python report.py
    deps:
      - report.py
      - results/total.json
    outs:
      - report.md:
          cache: false
""",
}
TOY_PARAMS = """seeds: [1, 2]
gen:
  n: 5
  divisor_1: 2
  divisor_2: {divisor_2}
cluster:
  partition: null
  resources:
    default: {{cpus: 1, gpus: 0, minutes: 5, mem_gb: 1}}
"""
TOY_OUTPUTS = [
    "data/gen-1.txt",
    "data/gen-2.txt",
    *(f"data/sq-{s}/{i}.txt" for s in (1, 2) for i in range(5)),
    "results/total.json",
    "report.md",
]


def git_commit(root: Path, message: str) -> None:
    """Commit everything in `root`."""
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-q", "-m", message, cwd=root)


def make_toy(root: Path, remote: Path, divisor_2: float = 4) -> Path:
    """A committed toy DVC project whose default remote is the folder `remote`."""
    root.mkdir(parents=True)
    run("git", "init", "-q", cwd=root)
    run("git", "config", "user.email", "toy@localhost", cwd=root)
    run("git", "config", "user.name", "toy", cwd=root)
    run("dvc", "init", "-q", cwd=root)
    run("dvc", "config", "core.analytics", "false", cwd=root)
    run("dvc", "remote", "add", "-d", "shared", str(remote), cwd=root)
    for name, text in TOY.items():
        (root / name).write_text(text)
    (root / "params.yaml").write_text(TOY_PARAMS.format(divisor_2=divisor_2))
    git_commit(root, "toy")
    return root


def cluster(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`python -m inflection_layers.tools.cluster ARGS` in `root` (its output is echoed for `pytest -s`)."""
    proc = run(
        sys.executable,
        "-m",
        "inflection_layers.tools.cluster",
        *args,
        cwd=root,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    print(proc.stdout, proc.stderr, sep="\n")
    return proc


def scontrol(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a mapping."""
    return dict(re.findall(r"(\w+)=(\S*)", run("scontrol", "show", "job", "-o", job_id).stdout))


def partition(state: str) -> None:
    """DOWN queues jobs without starting them (so their dependencies can be read); UP lets them run."""
    run("scontrol", "update", "PartitionName=debug", f"State={state}")


def repro_local(src: Path, dest: Path) -> Path:
    """A plain local `dvc repro` of a clone of `src`: the outputs the cluster run must equal."""
    run("git", "clone", "-q", str(src), str(dest))
    run("dvc", "repro", cwd=dest, timeout=600)
    return dest


def assert_clean(root: Path) -> None:
    """`dvc repro` runs no stage and `dvc status` is clean."""
    assert "Running stage" not in run("dvc", "repro", cwd=root).stdout
    assert run("dvc", "status", cwd=root).stdout.strip() == "Data and pipelines are up to date."


def test_toy_pipeline_one_job_per_stage(slurm: Path, tmp_path: Path) -> None:
    """Separate jobs with afterok on their parents; afterwards the workspace is complete, clean and as local."""
    toy = make_toy(tmp_path / "toy", tmp_path / "remote")
    reference = repro_local(toy, tmp_path / "reference")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    partition("DOWN")
    try:
        start = time.monotonic()
        sub = cluster(toy, "submit", f"--scratch={scratch}")
        submitted = time.monotonic() - start
        assert sub.returncode == 0
        state = json.loads((toy / ".dvc/tmp/cluster/state.json").read_text())
        jobs = state["jobs"]
        assert list(jobs) == ["gen@1", "gen@2", "square@1", "square@2", "combine", "(final)"]
        assert state["final_runs"] == ["report"]
        assert len({j["id"] for j in jobs.values()}) == len(jobs)
        expected = {
            "gen@1": [],
            "gen@2": [],
            "square@1": ["gen@1"],
            "square@2": ["gen@2"],
            "combine": ["square@1", "square@2"],
            "(final)": [s for s in jobs if s != "(final)"],
        }
        for stage, job in jobs.items():
            info = scontrol(job["id"])
            assert info["JobName"] == f"dvc:{stage}" and info["JobState"] == "PENDING"
            after = sorted(re.findall(r"afterok:(\d+)", info["Dependency"]))
            assert after == sorted(jobs[p]["id"] for p in expected[stage])
            assert info["NumCPUs"] == "1"
    finally:
        partition("UP")
    start = time.monotonic()
    assert cluster(toy, "wait", "--timeout=300").returncode == 0
    elapsed = time.monotonic() - start
    print(f"toy cluster run: submit {submitted:.1f} s, 6 jobs from release to the end of the final job {elapsed:.1f} s")
    assert_clean(toy)
    for path in TOY_OUTPUTS:
        assert (toy / path).read_text() == (reference / path).read_text(), path
    assert not list(scratch.iterdir()), "a job left its workspace behind"
    # Once Slurm forgets a job (MinJobAge, no accounting), `status` reads its state from the log's last line.
    assert job_state("999999", jobs["combine"]["log"])["JobState"] == "COMPLETED"
    assert job_state("999999", str(tmp_path / "no.log"))["JobState"] == "UNKNOWN"


def test_toy_failure_cancels_dependants_and_resubmission_reruns_only_the_rest(slurm: Path, tmp_path: Path) -> None:
    """A bad parameter fails gen@2: its dependants are cancelled, `status` names it and its log; after the fix,
    a resubmission computes only gen@2 and what depends on it (gen@1 and square@1 come from the run-cache)."""
    toy = make_toy(tmp_path / "toy", tmp_path / "remote", divisor_2=0)
    runlog = tmp_path / "runlog"
    env = {"TOY_RUNLOG": str(runlog)}
    assert cluster(toy, "submit", env=env).returncode == 0
    first = json.loads((toy / ".dvc/tmp/cluster/state.json").read_text())["jobs"]
    status = cluster(toy, "wait", "--timeout=300")
    assert status.returncode == 1
    states = {stage: scontrol(job["id"]) for stage, job in first.items()}
    assert {s: v["JobState"] for s, v in states.items()} == {
        "gen@1": "COMPLETED",
        "gen@2": "FAILED",
        "square@1": "COMPLETED",
        "square@2": "CANCELLED",
        "combine": "CANCELLED",
        "(final)": "CANCELLED",
    }
    assert all(states[s]["Reason"] == "DependencyNeverSatisfied" for s in ("square@2", "combine", "(final)"))
    failed = f"failed: gen@2 (job {first['gen@2']['id']}, FAILED, exit 255:0), log {first['gen@2']['log']}"
    assert failed in status.stdout  # dvc exits 255 when a stage's command fails
    assert "failed: square@2" not in status.stdout  # cancelled dependants are not reported as failures
    assert "ZeroDivisionError" in Path(first["gen@2"]["log"]).read_text()
    assert sorted(runlog.read_text().split()) == ["gen@1", "gen@2", "square@1"]

    params = toy / "params.yaml"
    params.write_text(params.read_text().replace("divisor_2: 0", "divisor_2: 3"))
    refused = cluster(toy, "submit", env=env)
    assert refused.returncode == 1 and refused.stdout.strip().count("\n") == 0
    assert "params.yaml" in refused.stdout and "commit first" in refused.stdout
    git_commit(toy, "fix divisor_2")
    runlog.write_text("")
    assert cluster(toy, "submit", env=env).returncode == 0
    second = json.loads((toy / ".dvc/tmp/cluster/state.json").read_text())["jobs"]
    assert cluster(toy, "wait", "--timeout=300").returncode == 0
    assert sorted(runlog.read_text().split()) == ["combine", "gen@2", "report", "square@2"]
    for stage in ("gen@1", "square@1"):  # resubmitted (not in the workspace's dvc.lock) but restored, not run
        log = Path(second[stage]["log"]).read_text()
        assert f"Stage '{stage}' is cached - skipping run" in log and "Running stage" not in log
    assert_clean(toy)
    reference = repro_local(toy, tmp_path / "reference")
    for path in TOY_OUTPUTS:
        assert (toy / path).read_text() == (reference / path).read_text(), path


def test_toy_killed_job_leaves_nothing_in_the_remote(slurm: Path, tmp_path: Path) -> None:
    """scancel during a stage: nothing of it reaches the remote, its workspace is removed, dependants cancelled."""
    remote = tmp_path / "remote"
    toy = make_toy(tmp_path / "toy", remote)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert cluster(toy, "submit", f"--scratch={scratch}", env={"TOY_SLEEP": "120"}).returncode == 0
    jobs = json.loads((toy / ".dvc/tmp/cluster/state.json").read_text())["jobs"]
    logs = [Path(jobs[s]["log"]) for s in ("gen@1", "gen@2")]
    deadline = time.monotonic() + 120
    while not all(p.exists() and "Running stage" in p.read_text() for p in logs):
        assert time.monotonic() < deadline, "the gen jobs never started their stage"
        time.sleep(0.5)
    run("scancel", jobs["gen@1"]["id"], jobs["gen@2"]["id"])
    status = cluster(toy, "wait", "--timeout=120")
    assert status.returncode == 1 and f"failed: gen@1 (job {jobs['gen@1']['id']}, CANCELLED" in status.stdout
    assert all(scontrol(jobs[s]["id"])["Reason"] == "DependencyNeverSatisfied" for s in ("square@1", "combine"))
    assert [p for p in remote.rglob("*") if p.is_file()] == []
    deadline = time.monotonic() + 60  # the job's EXIT trap runs once its stage process has ended
    while list(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not list(scratch.iterdir()), "a killed job left its workspace behind"


def test_study_smoke_profile_on_slurm(slurm: Path, tmp_path: Path) -> None:
    """The committed study (HEAD), smoke profile, on the cluster: one job per stage; afterwards `dvc repro` runs
    nothing, `dvc status` is clean, and the summary matches the committed smoke reference (a local smoke run of
    the same code: CI's reproduction check keeps them equal)."""
    data = REPO.parent / "shared" / "data"
    assert data.is_dir(), f"{data} is missing: the study reads SST-2 and RT from there (no hub access here)"
    study = tmp_path / "study"
    run("git", "clone", "-q", str(REPO), str(study))
    for key, value in (("user.email", "ci@localhost"), ("user.name", "CI")):
        run("git", "config", key, value, cwd=study)
    # params.yaml composed as `dvc exp run -S profile=smoke -S data.dir=...` would, by DVC's own Hydra code,
    # from the clone's config module; the smoke profile's `cluster` section asks for one CPU and no GPU per job.
    compose = (
        "import sys; from dvc.utils.hydra import compose_and_dump; "
        "compose_and_dump('params.yaml', None, 'inflection_layers.conf', 'config', '.', sys.argv[1:])"
    )
    run(
        sys.executable,
        "-c",
        compose,
        "profile=smoke",
        f"data.dir={data.resolve()}",
        cwd=study,
        env={**os.environ, "PYTHONPATH": str(study / "src")},
    )
    run("dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"), cwd=study)
    git_commit(study, "smoke profile on the cluster")
    start = time.monotonic()
    assert cluster(study, "submit", timeout=1800).returncode == 0
    assert cluster(study, "wait", "--timeout=7200", timeout=7300).returncode == 0
    jobs = json.loads((study / ".dvc/tmp/cluster/state.json").read_text())
    print(
        f"study smoke profile on the cluster: {len(jobs['jobs'])} jobs (the final one ran {jobs['final_runs']}), "
        f"{time.monotonic() - start:.0f} s"
    )
    assert_clean(study)
    check = run(
        sys.executable,
        "-m",
        "inflection_layers.tools.reference",
        "metrics/summary.json",
        str(study / "tests/reference/smoke-summary.json"),
        cwd=study,
        check=False,
    )
    assert check.returncode == 0, check.stdout
