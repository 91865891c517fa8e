"""Throughput and MFU: the peak FLOP/s of a device, and a step timer."""

from __future__ import annotations

import functools
import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets.
_GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 70e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


@functools.cache
def measured_matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on this device, measured (the CPU's practical peak): the best
    of three bursts of ``seconds / 3``, so that a noisy neighbour lowers it less."""
    return max(_matmul_burst(device, dtype, n, seconds / 3) for _ in range(3))


def _matmul_burst(device: str, dtype: torch.dtype, n: int, seconds: float) -> float:
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (model init) alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    iters, t0 = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt > seconds:
            break
    return 2.0 * n**3 * iters / dt


def peak_flops(device: torch.device, precision: str) -> float:
    """Peak FLOP/s of one device: a data-sheet table for known GPUs, else measured."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _GPU_PEAK_BF16.items():
            if key in name:
                return value if ("bf16" in precision or "16" in precision) else value / 2
        dtype = torch.bfloat16 if "bf16" in precision else torch.float32
        return measured_matmul_flops(str(device), dtype, n=4096)
    return measured_matmul_flops("cpu", torch.float32, n=2048, seconds=1.0)


class StepTimer:
    """Wall-clock seconds between consecutive ``tick()`` calls, averaged over a window."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.elapsed = 0.0
        self.steps = 0
        self.tokens = 0

    def tick(self, tokens: int) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.elapsed += now - self.last
            self.steps += 1
            self.tokens += tokens
        self.last = now

    def pop(self) -> tuple[float, float] | None:
        """(tokens/s, seconds/step) since the last pop, or None if nothing was timed."""
        if self.steps == 0 or self.elapsed <= 0:
            return None
        out = (self.tokens / self.elapsed, self.elapsed / self.steps)
        self.elapsed, self.steps, self.tokens = 0.0, 0, 0
        return out
