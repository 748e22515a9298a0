"""What every fine-tuning loop here does after its loss: one optimizer step, clipped, scheduled."""

from __future__ import annotations

from typing import Any, Iterable


def optimizer_step(loss: Any, parameters: Iterable[Any], opt: Any, sched: Any, clip: float) -> float:
    """Back-propagate ``loss``, clip the gradient norm at ``clip``, step the optimizer and the schedule; the
    loss as a float."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())
