"""One training step through teddy's data-parallel helpers (local_part, data_parallel,
share_weight), as pretrain_pool and evaluate take it; writes the loss over the whole global batch
and the parameter gradients to OUT (rank 0). Run with or without torchrun:
    python tests/helpers/ddp_step.py N OUT
"""

import sys

import torch
import torch.nn.functional as F

from teddy.runtime.distributed import data_parallel, init_distributed, is_main, local_part, share_weight

n, out = int(sys.argv[1]), sys.argv[2]
init_distributed(torch.device("cpu"))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
x, y = torch.randn(n, 3, 2, 2), torch.randint(3, (n,))
net = data_parallel(model)
whole = torch.arange(n)
idx = local_part(whole)
loss = F.cross_entropy(net(x[idx]), y[idx])
(loss * share_weight(len(idx), len(whole))).backward()
if is_main():
    torch.save({"grads": [p.grad.clone() for p in model.parameters()]}, out)
