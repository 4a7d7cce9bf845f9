"""torchrun set-up and collective helpers that also work in a single process (no init)."""
import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device_type):
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on the CPU.

    Returns (rank, local_rank, world_size).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return rank, local_rank, world_size


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def reduce_mean(tensor):
    """Mean of `tensor` over ranks (a detached copy); the tensor itself in a single process."""
    if not is_dist():
        return tensor.detach()
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor / get_world_size()


def reduce_sum(tensor):
    """In-place sum over ranks (used for EFL gradient statistics); no-op in a single process."""
    if is_dist():
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(module, src=0):
    """Give every rank rank `src`'s buffers (BatchNorm running statistics) before evaluation.

    DDP broadcasts buffers only at the start of each forward, so after the last training step every rank
    holds the statistics of its own last batch; without this, sharded evaluation mixes them and differs
    from eval.py on the checkpoint (rank 0's). mmcv's DistEvalHook does the same (broadcast_bn_buffer).
    """
    if is_dist():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def all_gather_objects(obj):
    """List of `obj` from every rank (a one-element list in a single process)."""
    if not is_dist():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup():
    if is_dist():
        dist.destroy_process_group()
