"""Run the DVC pipeline on Slurm: one job per stage that is not up to date, results through a shared DVC remote.

    python -m inflection_layers.tools.cluster submit [--scratch DIR] [--dry]   # from a login node, in the repository
    python -m inflection_layers.tools.cluster status                          # per stage: job, state, log
    python -m inflection_layers.tools.cluster wait [--timeout S]              # until every job has ended, then status

DVC decides what to run (`repo.status()` on its own stage graph, `repo.index.graph`) and carries results
(`dvc push`, the run-cache); Slurm orders the jobs (`--dependency=afterok:<parents>`, `--kill-on-invalid-dep=yes`).
Each stage job clones the committed repository into a scratch folder, runs `dvc repro --pull <stage>` there
(ancestors come back from the remote's run-cache, not recomputed), pushes the stage's outputs and then the
run-cache to the repository's default DVC remote, and deletes its clone. A final job in the user's workspace
runs `dvc repro --pull`: it restores every stage from the run-cache and runs the stages the run-cache cannot
carry (any `cache: false` output, e.g. `report`), so that afterwards `dvc repro` runs nothing and `dvc status`
is clean. Per-stage resources come from params.yaml's `cluster` section (`cluster.resources.<stage>`, `default`
for the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from inflection_layers.config import Cluster, Resources, parse_section

if TYPE_CHECKING:
    from dvc.stage import Stage

STATE = Path(".dvc/tmp/cluster/state.json")
FINAL = "(final)"
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}

JOB = """#!/bin/bash
# DVC stage {stage} of {root} at commit {commit}, written by inflection_layers.tools.cluster
set -euo pipefail
export PATH={bindir}:$PATH DVC_NO_ANALYTICS=1
ws=$(mktemp -d "${{DVC_CLUSTER_SCRATCH:-{scratch}}}/dvc-stage-XXXXXX")
trap 'cd /; rm -rf "$ws"' EXIT
trap 'exit 143' TERM INT
echo "stage {stage}: job $SLURM_JOB_ID on $(hostname), workspace $ws"
git clone --quiet --shared --no-checkout {root} "$ws"
cd "$ws"
git checkout --quiet --detach {commit}
export DVC_SITE_CACHE_DIR="$ws/.dvc/tmp/site-cache"
if [ -d src ]; then export PYTHONPATH="$ws/src${{PYTHONPATH:+:$PYTHONPATH}}"; fi
cat > .dvc/config.local <<'END'
[core]
    remote = cluster
['remote "cluster"']
    url = {remote_url}
END
dvc repro --pull {stage}
dvc push --with-deps {stage}
dvc push --run-cache {stage}
echo "stage {stage}: done"
"""

FINAL_JOB = """#!/bin/bash
# Restore every stage of {root} from the run-cache and run those it cannot carry, written by \
inflection_layers.tools.cluster
set -euo pipefail
export PATH={bindir}:$PATH DVC_NO_ANALYTICS=1
cd {root}
if [ -d src ]; then export PYTHONPATH="$PWD/src${{PYTHONPATH:+:$PYTHONPATH}}"; fi
if [ "$(git rev-parse HEAD)" != {commit} ] || [ -n "$(git status --porcelain --untracked-files=no -- {watched})" ]; then
  echo "the workspace changed since submission (commit {commit}); run dvc repro --pull yourself" >&2
  exit 1
fi
dvc repro --pull
echo "final: done"
"""


def sbatch_options(res: Resources) -> list[str]:
    """The sbatch options of one job's request (`cluster.resources.<stage>` in params.yaml)."""
    opts = [f"--cpus-per-task={res.cpus}", f"--time={res.minutes}", f"--mem={res.mem_gb * 1024}M"]
    return opts + ([f"--gres=gpu:{res.gpus}"] if res.gpus else [])


def cluster_config(root: Path) -> tuple[str | None, dict[str, Resources]]:
    """params.yaml's `cluster` section, validated by the study's schema (the rest of the file is the pipeline's
    business): (partition or None, resources per stage name, with `default`)."""
    raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
    section = parse_section(Cluster, raw.get("cluster"), "cluster")
    return section.partition, section.resources


def resources_for(table: dict[str, Resources], stage_name: str) -> Resources:
    """The entry for a stage (`source@over-42` uses `source`), else `default`."""
    return table.get(stage_name.split("@", 1)[0], table["default"])


def git(root: Path, *args: str) -> str:
    """Output of a git command in `root`."""
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def plan(root: Path) -> tuple[list[Stage], dict[str, list[str]], list[str], str, list[str]]:
    """From DVC itself: (stages needing a job, upstream first; their stale parents; stages left to the final job;
    the default remote's URL; paths whose uncommitted changes would make the jobs run something else)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        changed = set(repo.status())
        stale = {s for s in graph if s.addressing in changed}
        stale |= {d for s in list(stale) for d in nx.ancestors(graph, s)}  # everything downstream reruns too
        stale = {s for s in stale if s.cmd and not s.frozen}
        position = {s: i for i, s in enumerate(graph)}  # dvc.yaml order among stages that may run together
        upstream_first = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=position.get)
        order = [s for s in upstream_first if s in stale]
        # The remote carries only stages whose outputs are all cached (run-cache); the others and their
        # downstream stages run in the final job, in the user's workspace.
        local = {s for s in order if s.always_changed or not s.deps or not all(o.use_cache for o in s.outs)}
        local |= {d for s in list(local) for d in nx.ancestors(graph, s) if d in stale}
        jobs = [s for s in order if s not in local]
        parents = {s.addressing: [p.addressing for p in graph.successors(s) if p in stale] for s in jobs}
        name = repo.config["core"].get("remote")
        if not name:
            sys.exit("cluster: no default DVC remote; add a shared one first: dvc remote add -d shared /shared/path")
        url = repo.config["remote"][name]["url"]
        watched = {os.path.relpath(d.fs_path, root) for s in graph for d in s.deps if getattr(d, "fs_path", None)}
        watched |= {os.path.relpath(s.path, root) for s in graph if getattr(s, "path", None)} | {"src"}
    inside = sorted(w for w in watched if not w.startswith(".."))
    return jobs, parents, [s.addressing for s in order if s in local], url, inside


def sbatch(script: Path, name: str, log: Path, res: Resources, partition: str | None, after: list[str]) -> str:
    """Submit one job script; its Slurm id."""
    cmd = ["sbatch", "--parsable", f"--job-name=dvc:{name}", f"--output={log}", f"--chdir={script.parent}"]
    cmd += sbatch_options(res) + ([f"--partition={partition}"] if partition else [])
    if after:
        cmd += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    out = subprocess.run([*cmd, str(script)], check=True, capture_output=True, text=True).stdout
    return out.strip().split(";")[0]


def job_fields(root: Path, commit: str, remote: str, scratch: str, watched: list[str]) -> dict[str, str]:
    """The values JOB and FINAL_JOB are formatted with (paths shell-quoted)."""
    return {
        "root": shlex.quote(str(root)),
        "commit": commit,
        "remote_url": remote,
        "scratch": scratch,
        "bindir": shlex.quote(str(Path(sys.executable).parent)),
        "watched": shlex.join(watched),
    }


def final_resources(table: dict[str, Resources], local: list[str]) -> Resources:
    """The final job's request: the most cpus, gpus and memory of its stages, their minutes summed."""
    needs = [resources_for(table, a.split(":")[-1]) for a in local] or [table["default"]]
    return Resources(
        max(r.cpus for r in needs),
        max(r.gpus for r in needs),
        sum(r.minutes for r in needs),
        max(r.mem_gb for r in needs),
    )  # it runs its stages one after the other


def print_plan(jobs: list[Stage], parents: dict[str, list[str]], local: list[str], table: dict, dry: bool) -> None:
    """Print the plan: with `dry`, each job's parents and resources; the stages the final job runs itself."""
    if dry:
        for s in jobs:
            print(f"{s.addressing}: after {parents[s.addressing] or 'nothing'}, {resources_for(table, s.name)}")
        print(f"{FINAL}: after every job")
    if local:
        print(
            f"cluster: the final job runs {', '.join(local)} itself (a `cache: false` output, or downstream "
            "of one: the run-cache cannot carry them)"
        )


def submit_jobs(
    run_dir: Path,
    jobs: list[Stage],
    parents: dict[str, list[str]],
    fields: dict[str, str],
    table: dict[str, Resources],
    partition: str | None,
    final: Resources,
) -> tuple[dict[str, str], dict[str, str]] | None:
    """Write and submit every job script, final last: (ids, logs) per stage, or None after cancelling on failure."""
    ids: dict[str, str] = {}
    logs: dict[str, str] = {}
    try:
        for s in jobs:
            safe = re.sub(r"[^\w@.=+-]", "_", s.addressing)
            script, logs[s.addressing] = run_dir / f"{safe}.sh", str(run_dir / f"{safe}.log")
            script.write_text(JOB.format(stage=shlex.quote(s.addressing), **fields))
            after = [ids[p] for p in parents[s.addressing]]
            res = resources_for(table, s.name)
            ids[s.addressing] = sbatch(script, s.addressing, Path(logs[s.addressing]), res, partition, after)
        script, logs[FINAL] = run_dir / "final.sh", str(run_dir / "final.log")
        script.write_text(FINAL_JOB.format(**fields))
        ids[FINAL] = sbatch(script, FINAL, Path(logs[FINAL]), final, partition, list(ids.values()))
    except subprocess.CalledProcessError as err:
        subprocess.run(["scancel", *ids.values()], check=False)
        print(f"cluster: sbatch failed: {err.stderr.strip()}; cancelled the {len(ids)} job(s) already submitted")
        return None
    return ids, logs


def state_record(
    commit: str, remote: str, run_dir: Path, local: list[str], parents: dict, ids: dict, logs: dict
) -> dict:
    """What STATE records of a submission: the commit, the remote, each job's id, log and parents."""
    return {
        "commit": commit,
        "remote": remote,
        "run_dir": str(run_dir),
        "final_runs": local,
        "jobs": {k: {"id": ids[k], "log": logs[k], "parents": parents.get(k, [])} for k in ids},
    }


def submit(root: Path, scratch: str, dry: bool) -> int:
    """Submit one job per stale stage plus the final job; print and record (STATE) job ids and logs."""
    if (root / STATE).exists() and status(root, quiet=True)[1]:
        print(f"cluster: the last submission ({STATE}) still has jobs pending or running; wait, or scancel them")
        return 1
    jobs, parents, local, remote, watched = plan(root)
    dirty = git(root, "diff", "--name-only", "HEAD", "--", *watched).split()  # staged or not
    if dirty:
        print(f"cluster: uncommitted changes to {', '.join(dirty)}; the jobs run the committed state: commit first")
        return 1
    if not jobs and not local:
        print("cluster: every stage is up to date; nothing submitted")
        return 0
    commit = git(root, "rev-parse", "HEAD")
    partition, table = cluster_config(root)
    run_dir = root / ".dvc/tmp/cluster" / time.strftime("%Y%m%d-%H%M%S")
    fields = job_fields(root, commit, remote, scratch, watched)
    print_plan(jobs, parents, local, table, dry)
    if dry:
        return 0
    if subprocess.run(["dvc", "push", "--quiet"], cwd=root, check=False).returncode:  # the committed outputs
        print("cluster: warning: `dvc push` failed; jobs pull what the remote has and recompute the rest")
    run_dir.mkdir(parents=True, exist_ok=True)
    submitted = submit_jobs(run_dir, jobs, parents, fields, table, partition, final_resources(table, local))
    if submitted is None:
        return 1
    ids, logs = submitted
    state = state_record(commit, remote, run_dir, local, parents, ids, logs)
    (root / STATE).write_text(json.dumps(state, indent=1))
    for k, job_id in ids.items():
        print(f"{k:<28} job {job_id:<8} log {logs[k]}")
    print(f"cluster: {len(ids)} jobs submitted; `python -m inflection_layers.tools.cluster status` (state: {STATE})")
    return 0


def job_state(job_id: str, log: str) -> dict[str, str]:
    """JobState, Reason, ExitCode of one job from `scontrol show job -o`, else `sacct`; once Slurm has forgotten
    the job (MinJobAge, no accounting), COMPLETED if its log ends with the script's last line, else UNKNOWN."""
    run = subprocess.run(["scontrol", "show", "job", "-o", job_id], check=False, capture_output=True, text=True)
    if run.returncode == 0 and "JobState=" in run.stdout:
        return dict(re.findall(r"(JobState|Reason|ExitCode)=(\S+)", run.stdout))
    run = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ExitCode"], check=False, capture_output=True, text=True
    )
    if run.returncode == 0 and run.stdout.strip():
        state, code = run.stdout.split("\n")[0].split("|")[:2]
        return {"JobState": state.split()[0], "Reason": "None", "ExitCode": code}
    done = Path(log).exists() and Path(log).read_text(errors="replace").rstrip().endswith(": done")
    return {
        "JobState": "COMPLETED" if done else "UNKNOWN",
        "Reason": "Slurm forgot it; state from its log",
        "ExitCode": "0:0" if done else "?",
    }


def tail(path: str, lines: int = 5) -> str:
    """The last lines of a log, indented."""
    text = Path(path).read_text(errors="replace").splitlines()[-lines:] if Path(path).exists() else ["(no log)"]
    return "\n".join("    " + line for line in text)


def status(root: Path, quiet: bool = False) -> tuple[int, bool]:
    """Print each job's state; (exit code: 0 all completed, 1 something failed, 2 still running; any still active)."""
    state = json.loads((root / STATE).read_text())
    rows = {stage: (job, job_state(job["id"], job["log"])) for stage, job in state["jobs"].items()}
    active = any(st["JobState"] in ACTIVE and st.get("Reason") != "DependencyNeverSatisfied" for _, st in rows.values())
    failed = [
        (s, j, st)
        for s, (j, st) in rows.items()
        if st["JobState"] not in ACTIVE | {"COMPLETED", "CANCELLED"}
        or (st["JobState"] == "CANCELLED" and st.get("Reason") != "DependencyNeverSatisfied")
    ]
    if not quiet:
        for stage, (job, st) in rows.items():
            why = f" ({st['Reason']})" if st.get("Reason", "None") != "None" else ""
            print(f"{stage:<28} job {job['id']:<8} {st['JobState']:<10} exit {st['ExitCode']}{why}  {job['log']}")
        for stage, job, st in failed:
            print(f"failed: {stage} (job {job['id']}, {st['JobState']}, exit {st['ExitCode']}), log {job['log']}:")
            print(tail(job["log"]))
    done = all(st["JobState"] == "COMPLETED" for _, st in rows.values())
    return (0 if done else 1 if failed or not active else 2), active


def wait(root: Path, timeout: float, poll: float = 2.0) -> int:
    """Poll until no job is pending or running (or `timeout` seconds), then print the status."""
    end = time.monotonic() + timeout
    while status(root, quiet=True)[1] and time.monotonic() < end:
        time.sleep(poll)
    return status(root)[0]


def main(argv: list[str] | None = None) -> None:
    """CLI: submit | status | wait."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="submit one Slurm job per stage that is not up to date, and a final job")
    p.add_argument("--scratch", default="${TMPDIR:-/tmp}", help="where jobs clone the repository (on the node)")
    p.add_argument("--dry", action="store_true", help="print the plan, submit nothing")
    sub.add_parser("status", help="state and log of each job of the last submission")
    p = sub.add_parser("wait", help="wait until every job has ended, then print the status")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds")
    args = parser.parse_args(argv)
    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel"))
    if args.command == "submit":
        sys.exit(submit(root, args.scratch, args.dry))
    sys.exit(status(root)[0] if args.command == "status" else wait(root, args.timeout))


if __name__ == "__main__":
    main()
