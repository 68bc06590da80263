"""A user-defined task in ~20 lines: fit y = 3x - 1 with one linear layer.

    dai-swarm task check examples.my_task:LineTask                   # from the repository root
    dai-swarm peer --run-id line --task examples.my_task:LineTask
"""
import torch

import dai_swarm


class LineTask(dai_swarm.Task):
    name, batch_size = "line", 32

    def __init__(self, n: int = 4096):
        x = torch.linspace(-1, 1, n).unsqueeze(1)  # deterministic data: item i never changes
        self.dataset = [(x[i], 3 * x[i] - 1) for i in range(n)]  # anything with len() and [i]

    def build_model(self, seed):
        torch.manual_seed(seed)  # weights depend on the seed only
        return torch.nn.Linear(1, 1)

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    def inner_optimizer(self, params):
        return torch.optim.SGD(params, lr=0.1)

    def evaluate(self, model):
        x, y = torch.tensor([[0.5]]), torch.tensor([[0.5]])
        with torch.no_grad():
            return {"loss": self.loss(model, (x, y)).item()}

    def config(self):
        return {"n": len(self.dataset), "lr": 0.1}
