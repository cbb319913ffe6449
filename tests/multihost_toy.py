"""One process of a toy GRPO run over several processes (tests/test_multihost.py):

    python -m tests.multihost_toy OUT MAX_STEPS DEVICES [COORDINATOR NUM_PROCESSES PROCESS_ID]

Each process has DEVICES fake CPU devices; the mesh (fsdp) spans all processes' devices.
Prints ``LOSSES <json>`` (each step's loss) and ``FILES <json>`` (what the run directory
holds, from process 0) on success.
"""

from __future__ import annotations

import json
import os
import sys
import warnings


def main(argv: list[str]) -> int:
    out, max_steps, devices = argv[0], int(argv[1]), int(argv[2])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    warnings.filterwarnings("ignore")
    from bigthoughts.training import hosts

    if len(argv) > 3:
        hosts.start(hosts.settings(argv[3], int(argv[4]), int(argv[5])))
    import jax

    from tests.train_toy import run_toy

    result = run_toy(out, max_steps=max_steps, horizon=4, mesh_fsdp=len(jax.devices()))
    print("LOSSES", json.dumps([h["loss"] for h in result.history]), flush=True)
    if hosts.writer():
        files = sorted(str(p.relative_to(out)) for p in __import__("pathlib").Path(out).rglob("*")
                       if p.is_file() and "tensorboard" not in p.parts)
        print("FILES", json.dumps(files), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
