"""Same seed -> bitwise-identical weights, batches and training in two separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dai_swarm.canonical import state_hash
from dai_swarm.tasks import load_task

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    torch.set_num_threads(1)
    from dai_swarm.canonical import state_hash
    from dai_swarm.tasks import load_task

    out = {}
    for spec in sys.argv[1:]:
        task = load_task(spec)
        model = task.build_model(7)
        init = state_hash(model.state_dict())
        opt = task.inner_optimizer(model.parameters())
        batches = []
        for step in range(3):
            idx = [(step * 7919 + j * 104729) % len(task.dataset) for j in range(task.batch_size)]
            x, y = task.get_batch(idx)
            batches.append(state_hash({"x": x, "y": y}))
            task.loss(model, (x, y)).backward()
            opt.step()
            opt.zero_grad()
        out[spec] = {"init": init, "batches": batches, "trained": state_hash(model.state_dict()),
                     "eval": task.evaluate(model)["loss"], "config_hash": task.config_hash()}
    print(json.dumps(out))
''')

SPECS = ["regression", "tinylm-small"]


def _run() -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *SPECS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_two_processes_agree_bitwise():
    a, b = _run(), _run()
    assert a == b
    for spec in SPECS:
        task = load_task(spec)
        # initial weights do not depend on the thread count: this process agrees too
        assert a[spec]["init"] == state_hash(task.build_model(7).state_dict())
        assert a[spec]["config_hash"] == task.config_hash()
        assert a[spec]["trained"] != a[spec]["init"]
        assert len(set(a[spec]["batches"])) == 3
