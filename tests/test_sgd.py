"""fedcmi's SGD is torch.optim.SGD's update bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fedcmi.methods.sgd import SGD


def _train(make_opt, steps: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    opt = make_opt(list(model.parameters()))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for step in range(steps):
        opt.zero_grad()
        out = model[:4](x) if step % 2 else model(x)  # the last layer gets no gradient every other step
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 1e-4), (0.0, 0.0), (0.5, 0.0)])
def test_same_numbers_as_torch_optim_sgd(momentum, weight_decay):
    ours = _train(lambda p: SGD(p, lr=0.1, momentum=momentum, weight_decay=weight_decay))
    theirs = _train(lambda p: torch.optim.SGD(p, lr=0.1, momentum=momentum, weight_decay=weight_decay))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    untouched = _train(lambda p: SGD(p, lr=0.0))
    assert not all(torch.equal(a, b) for a, b in zip(ours, untouched, strict=True))  # it did train


def test_a_local_update_does_not_import_torch_dynamo():
    code = """
import sys
from fedcmi.methods.sgd import SGD
import torch
p = torch.nn.Parameter(torch.ones(3))
opt = SGD([p], lr=0.5, momentum=0.9)
for _ in range(2):
    opt.zero_grad(); (p * p).sum().backward(); opt.step()
assert abs(float(p[0]) - (1 - 0.5 * 2 - 0.5 * (0.9 * 2 + 2 * 0.0))) < 1e-6, float(p[0])
print('torch._dynamo' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
