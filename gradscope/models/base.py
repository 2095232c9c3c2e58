"""What every gradscope generator shares: a Gaussian latent of known size."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradscope._checks import check_int_at_least


class LatentGenerator(nn.Module):
    """Base of the generators: maps ``z ~ N(0, I_{z_dim})`` to a sample.

    Attributes
    ----------
    z_dim : int
        Size of the latent vector.
    output_shape : tuple of int
        Shape of one generated sample, ``(channels, height, width)`` or ``(data_dim,)``.
    """

    def __init__(self, z_dim: int, output_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.z_dim = check_int_at_least("z_dim", z_dim, 1)
        self.output_shape = tuple(output_shape)

    def sample_latent(
        self, n: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` latent vectors from the standard normal, shape ``(n, z_dim)``.

        Parameters
        ----------
        n : int
            Number of vectors.
        device : torch.device or str, optional
            Where the result lives; defaults to the device of the model's parameters.
        generator : torch.Generator, optional
            Source of randomness. The draw happens on the generator's own device and
            is then moved, so a CPU generator gives the same latents for any ``device``.

        Examples
        --------
        >>> from gradscope.models import MLPGenerator
        >>> MLPGenerator(z_dim=4).sample_latent(3).shape
        torch.Size([3, 4])
        """
        check_int_at_least("n", n, 1)
        if device is None:
            device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        if generator is None:
            return torch.randn(n, self.z_dim, device=device, dtype=dtype)
        z = torch.randn(n, self.z_dim, generator=generator, device=generator.device, dtype=dtype)
        return z.to(device)


class ImageGenerator(LatentGenerator):
    """A generator of square images ``(channels, image_size, image_size)``; subclasses validate the size."""

    def __init__(self, image_size: int, channels: int, z_dim: int) -> None:
        check_int_at_least("channels", channels, 1)
        super().__init__(z_dim, (channels, image_size, image_size))
        self.image_size, self.channels = image_size, channels
