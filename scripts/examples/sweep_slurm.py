#!/usr/bin/env python3
"""A sweep on a Slurm cluster through dask-jobqueue: a worked example to copy and edit, not run by
the tests (docs/sweep.md, "On Slurm").

It starts a Dask scheduler in this process, asks Slurm for JOBS worker jobs (one whole node each:
one Dask worker per job, all the node's cores as its threads, the resource `quantppl=1`, so each
node runs one `quantppl compare` batch at a time with --threads = its cores), and runs
scripts/sweep.py against that scheduler. Run it on a login node of the cluster, inside this
checkout, with the repository on storage the compute nodes also mount (the model and the text are
read there; add --ship-inputs to the sweep instead when they are not):

    pip install dask-jobqueue        # PyPI (Debian 12 packages distributed, not dask-jobqueue)
    python3 scripts/examples/sweep_slurm.py --jobs 8 --queue cpu --account myproject \
        --cores 32 --memory 64GB --walltime 04:00:00 -- \
        --out sweeps/flan-t5-xl --model models/flan-t5-xl.pt --text data/eval.txt

Everything after `--` goes to scripts/sweep.py unchanged; rerunning the same command resumes the
sweep (results.csv keeps every finished batch, whichever node computed it). Written against
dask-jobqueue 0.8 (worker_extra_args, job_extra_directives); older releases call these
`extra` and `job_extra`.
"""

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, sweep_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description="Run scripts/sweep.py on Slurm worker jobs (dask-jobqueue).")
    p.add_argument("--jobs", type=int, default=4, help="Slurm jobs = Dask workers (default: %(default)s)")
    p.add_argument("--queue", help="Slurm partition (#SBATCH -p)")
    p.add_argument("--account", help="Slurm account (#SBATCH -A)")
    p.add_argument("--cores", type=int, required=True, help="cores per node: the worker's threads and quantppl --threads")
    p.add_argument("--memory", required=True, help="memory per job, e.g. 64GB (a model + its fp32 backup + activations)")
    p.add_argument("--walltime", default="04:00:00")
    p.add_argument("--python", default="/usr/bin/python3", help="Python on the compute nodes with distributed installed")
    args = p.parse_args(own)
    if not sweep_args:
        p.error("give the sweep's own arguments after --, e.g. -- --out sweeps/x --model M.pt")

    from dask_jobqueue import SLURMCluster  # noqa: deferred: only this example needs it

    cluster = SLURMCluster(
        queue=args.queue, account=args.account, walltime=args.walltime,
        cores=args.cores, processes=1, memory=args.memory,   # one worker per job, all cores as threads
        python=args.python,
        worker_extra_args=["--resources", "quantppl=1"],      # one batch at a time per worker
        job_extra_directives=["--exclusive"],                 # nothing else competing for the cores
        local_directory=os.environ.get("TMPDIR", "/tmp"),     # where a worker writes shipped inputs
    )
    try:
        print(cluster.job_script(), file=sys.stderr)
        cluster.scale(jobs=args.jobs)
        cmd = [sys.executable, os.path.join(REPO, "scripts", "sweep.py"), "--scheduler", cluster.scheduler_address,
               *sweep_args]
        return subprocess.run(cmd).returncode
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
