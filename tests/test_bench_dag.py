"""benchmarks/bench_dag.py's limit is honest only while its bare Snakefile plans the same DAG
as the workflow: the same jobs with the same edges. It drifted once (qc and the report gained
inputs from the features and slide-model stages, the bare Snakefile did not), which made the
workflow look 10 % slower than it was. This compares both `snakemake --dag` outputs on a
generated sheet, for each choice of stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_dag  # noqa: E402 - the benchmark is a script, not a package


def dag_edges(workdir: Path, snakefile: Path, args: list[str]) -> list[tuple[str, str]]:
    """The DAG's edges, each as (upstream job, downstream job) labels (rule and wildcards)."""
    # The dry-run and quiet flags do not apply to --dag.
    args = [a for a in args if a not in ("-n", "-q", "rules")]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir)]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [*cmd, "--dag", *args], capture_output=True, text=True, cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = dict(re.findall(r'\t(\d+)\[label = "(.*?)"', proc.stdout))
    assert labels, proc.stdout[-3000:]
    edges = re.findall(r"\t(\d+) -> (\d+)", proc.stdout)
    return sorted((labels[a], labels[b]) for a, b in edges)


@pytest.mark.parametrize("stages", list(bench_dag.STAGES))
def test_bare_snakefile_plans_the_workflows_dag(tmp_path: Path, stages: str) -> None:
    sheet = bench_dag.make_cohort(tmp_path, 4)
    bare = tmp_path / "bare.smk"
    bare.write_text(bench_dag.BARE_SNAKEFILE)
    args = bench_dag.variants(tmp_path, sheet, stages)["quiet"]
    real = dag_edges(tmp_path, REPO / "workflow" / "Snakefile", args["real"])
    assert dag_edges(tmp_path, bare, args["bare"]) == real
    # 4 slides, 2 patients: every per-slide job has an upstream or downstream edge.
    assert len(real) > 4 * 5
