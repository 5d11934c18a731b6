"""One process of a multi-process pretraining run (tests/test_multiprocess.py starts them).

    python -m tests.multiprocess.worker --process_id=0 --num_processes=2 --port=12345 \
        --workdir=/tmp/run --steps=3 --mesh=expert=8

The device count comes from XLA_FLAGS in the environment (--xla_force_host_platform_device_count
=4 per process). With --num_processes=1 it is a plain single-process run (the reference):
jax.distributed is not initialised. Prints the topology, then the run's final loss, as JSON lines.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,expert=4' -> {'data': 2, 'expert': 4}."""
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--mesh", default="data=1", help="config.mesh, e.g. 'data=2,expert=4'")
    args = p.parse_args()

    import jax

    if args.num_processes > 1:
        # CPU collectives between processes go through gloo; must be set before initialize.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    from moe_rl import sharding
    from moe_rl.recipes import pretrain
    from tests.utils import tiny_pretrain_config

    config = tiny_pretrain_config(args.steps, **parse_mesh(args.mesh))
    mesh = sharding.mesh_from_config(config)
    groups = None  # the processes holding each expert group (the devices along 'expert')
    if mesh is not None:
        procs = np.vectorize(lambda d: d.process_index)(mesh.devices)
        along = np.moveaxis(procs, mesh.axis_names.index("expert"), -1)
        groups = [sorted(set(g.tolist())) for g in along.reshape(-1, along.shape[-1])]
    print(
        json.dumps(
            dict(
                process=jax.process_index(),
                processes=jax.process_count(),
                devices=jax.device_count(),
                local_devices=jax.local_device_count(),
                mesh=None if mesh is None else dict(mesh.shape),
                expert_group_processes=groups,
            )
        ),
        flush=True,
    )
    summary = pretrain.run(config, args.workdir)
    print(json.dumps({"final_loss": summary["final_loss"], "steps": summary["steps"]}), flush=True)
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
