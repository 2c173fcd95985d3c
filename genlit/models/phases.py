"""One update of some networks while the others stand still: the step every multi-network model shares.

A GAN's discriminator update must not put gradients into the generator, and its generator
update must not move the discriminator; a WAE-GAN's latent discriminator and its autoencoder
alternate the same way, and so will every family that trains two networks against each other.
:func:`frozen` and :func:`grad_norm` are the pieces; ``GenerativeModel.run_phase`` puts them
together with the divergence check and the optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def frozen(*networks: nn.Module) -> Iterator[None]:
    """No gradient flows into the weights of ``networks`` inside the block.

    What ``LightningModule.toggled_optimizer`` does, at a fraction of its per-step cost; weights
    a user froze stay frozen afterwards.
    """
    trainable = [p for network in networks for p in network.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def grad_norm(parameters: Iterable[nn.Parameter]) -> Tensor:
    """The L2 norm of all gradients of ``parameters`` together (0 when none has a gradient)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)
