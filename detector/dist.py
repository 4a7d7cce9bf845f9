"""torchrun set-up and collective helpers that also work in a single process (no init)."""
import datetime
import os

import torch
import torch.distributed as dist

from .errors import UserError


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


def run_on_main_process(function):
    """function() on rank 0 alone, its result on every rank (broadcast: it must pickle); an error it raises is
    raised on every rank. For what rank 0's filesystem decides (the checkpoint to resume, the run directory's
    config): other nodes may not share that filesystem, or see it a moment later."""
    if not is_dist():
        return function()
    payload = [None]
    if is_main_process():
        try:
            payload = [("result", function())]
        except UserError as error:
            payload = [("error", error)]
        except BaseException as error:  # a bug: every rank stops rather than waits for a broadcast
            dist.broadcast_object_list([("error", RuntimeError(f"rank 0 failed: {error!r}"))], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def sync_batchnorm(model, enabled, trains_statistics, device):
    """SyncBatchNorm in place of BatchNorm (train.sync_bn) when several processes train BN statistics on GPUs:
    each BN layer then normalises with the statistics of the whole batch over all ranks."""
    if not (enabled and trains_statistics and get_world_size() > 1):
        return model
    if device.type != "cuda":
        raise UserError("train.sync_bn=true: SyncBatchNorm runs on GPUs only (PyTorch); on CPUs use "
                        "model.backbone.norm_eval=true (frozen statistics) or train.sync_bn=false")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def cleanup():
    if is_dist():
        dist.destroy_process_group()
