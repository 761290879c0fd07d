"""Check the `tensor` weight-sync payload end to end without a server: a bucket flattened where it
lies (SGLang's FlattenedTensorBucket) and serialized once per consumer (MultiprocessingSerializer),
opened by separate processes as SGLang's TP ranks do (`TpModelWorker.deserialize_own_rank`: each
its own payload), reconstructed and compared with the source. On a GPU this is the CUDA IPC path
(one handle per rank, then `torch.cuda.ipc_collect()`); with --cpu-smoke the shared-memory one.

    python tools/check_tensor_ipc.py --ranks 2            # GPU host (tools/gpu_check.sh)
    python tools/check_tensor_ipc.py --cpu-smoke          # CPU
"""

from __future__ import annotations

import argparse

import torch
import torch.multiprocessing as mp


def _consumer(rank: int, payloads: list[str], expected: dict[str, torch.Tensor], device: str) -> None:
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    data = MultiprocessingSerializer.deserialize(payloads[rank])  # its own payload only
    bucket = FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"], metadata=data["metadata"])
    for name, tensor in bucket.reconstruct_tensors():
        copy = tensor.to(device, copy=True)  # what the engine's load_weights does: copy into its params
        if not torch.equal(copy.cpu(), expected[name]):
            raise SystemExit(f"rank {rank}: {name} differs after the round trip")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=2, help="consumer processes (engine TP ranks)")
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU tensors (shared memory)")
    args = parser.parse_args()
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    device = "cpu" if args.cpu_smoke else "cuda"
    if not args.cpu_smoke:
        assert torch.cuda.is_available(), "no GPU (use --cpu-smoke)"
    mp.set_sharing_strategy("file_system")
    named = [
        ("model.layers.0.mlp.up_proj.weight", torch.randn(256, 128, dtype=torch.bfloat16)),
        ("model.norm.weight", torch.randn(128, dtype=torch.float32)),
        ("model.embed_tokens.weight", torch.randn(512, 128, dtype=torch.bfloat16)),
    ]
    expected = {name: tensor for name, tensor in named}
    flat = FlattenedTensorBucket(named_tensors=[(n, t.to(device)) for n, t in named])
    data = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
    payloads = [MultiprocessingSerializer.serialize(data, output_str=True) for _ in range(args.ranks)]
    ctx = mp.get_context("spawn")
    consumers = [
        ctx.Process(target=_consumer, args=(rank, payloads, expected, device)) for rank in range(args.ranks)
    ]
    for process in consumers:
        process.start()
    for process in consumers:
        process.join(120)
        if process.exitcode != 0:
            raise SystemExit(f"a consumer failed (exit code {process.exitcode})")
    del data, flat
    if device == "cuda":
        torch.cuda.ipc_collect()
    print(f"tensor payload round trip OK: {len(named)} tensors, {args.ranks} consumers, {device}")


if __name__ == "__main__":
    main()
