"""Pipelines: the control plane runs a recipe from training to a gated publish and, if asked, a rollout.

    recipe.py     parse + validate a pipeline recipe; every error listed with its location (pure but for file checks)
    plan.py       stage keys (content hashes of config + inputs) and the job/stage state tables (pure)
    jobs.py       the SQLite tables: jobs, stages (inputs, outputs, metrics), log lines; the queue
    stages.py     what train / evaluate / export / gate do, run inside a worker process
    worker.py     `python -m control_plane.pipelines.worker SPEC.json`: one stage, result.json written last
    executor.py   the executor seam: local worker processes, torchrun for a multi-process train stage
    delivery.py   publish + rollout, in the control plane process (the registry and rollout engine live there)
    manager.py    the queue runner: bounded workers, cancel, crash/OOM, resume after a control plane restart
    servicer.py   the Admin RPCs (thin), cli.py the `slmops pipeline` commands
"""
