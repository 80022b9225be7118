"""PyTorch's own distributed engine on this machine (docs/scaling.md): torchrun starts the ranks,
c10d's TCPStore rendezvous, a Gloo process group (NCCL on GPUs) all-reduces gradient-sized buffers.
  torchrun --standalone --nproc_per_node=2 bench/ddp_allreduce.py [gloo|nccl]
Prints one JSON line per buffer (rank 0) with the mean seconds per all-reduce and a result check."""
import json
import os
import sys
import time

import torch
import torch.distributed as dist

backend = sys.argv[1] if len(sys.argv) > 1 else "gloo"
dist.init_process_group(backend)
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}") if backend == "nccl" else torch.device("cpu")
# torchvision's parameter counts (1000-class heads), the size of one gradient all-reduce per step.
for name, n in [("mobilenet_v2", 3_504_872), ("resnet18", 11_689_512)]:
    t = torch.full((n,), float(rank + 1), device=device)
    for _ in range(2):
        dist.all_reduce(t)
    t.fill_(float(rank + 1))
    dist.barrier()
    k = 5
    t0 = time.perf_counter()
    for i in range(k):
        dist.all_reduce(t)
        if i == 0:
            ok = bool((t == world * (world + 1) / 2).all())
    if backend == "nccl":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / k
    if rank == 0:
        print(json.dumps({"backend": backend, "world": world, "buffer": name, "floats": n,
                          "mb": n * 4 / 1e6, "s_per_allreduce": dt, "sum_correct": ok,
                          "env": {k: os.environ.get(k) for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]}}))
dist.destroy_process_group()
