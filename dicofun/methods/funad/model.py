"""FUN-AD's per-patch network ("localnet", METHODS §1).

A feature adaptor (one dense layer) followed by a small MLP discriminator that
maps every adapted patch feature to an anomaly probability. Initialisation
follows PyTorch's ``nn.Linear`` defaults, as the reference implementation does.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's nn.Linear draws kernels from U(±1/sqrt(fan_in)), i.e. a uniform
# variance-scaling initialiser with scale 1/3 on fan_in.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                     "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default ``nn.Linear`` bias initialiser, U(±1/sqrt(fan_in)).

  Flax bias initialisers only see the bias shape, so the layer's fan-in is
  bound here.

  Args:
    fan_in: the input dimension of the dense layer.

  Returns:
    An initialiser ``(key, shape, dtype) -> array``.
  """
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, *, name: str) -> nn.Dense:
  """``nn.Dense`` with PyTorch-default kernel and bias initialisation."""
  return nn.Dense(features, kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(fan_in), name=name)


class LocalNet(nn.Module):
  """Adaptor + discriminator applied to every patch feature independently.

  Attributes:
    dim: input feature dimension D (the adaptor maps D → D).
    hidden: widths of the discriminator's hidden layers (paper: 1024, 128).
    negative_slope: LeakyReLU slope (paper: 0.2).
  """

  dim: int
  hidden: Sequence[int] = (1024, 128)
  negative_slope: float = 0.2

  def setup(self):
    self.adaptor = torch_dense(self.dim, self.dim, name="adaptor")
    fan_ins = (self.dim,) + tuple(self.hidden)
    widths = tuple(self.hidden) + (1,)
    self.disc = [torch_dense(w, f, name=f"disc_{i}")
                 for i, (w, f) in enumerate(zip(widths, fan_ins))]

  def adapt(self, x: jax.Array) -> jax.Array:
    """Adapted features f (..., D); skips the discriminator."""
    return nn.leaky_relu(self.adaptor(x), self.negative_slope)

  def __call__(self, x: jax.Array, *,
               return_logits: bool = False) -> tuple[jax.Array, jax.Array]:
    """Scores patch features.

    Args:
      x: (..., D) patch features.
      return_logits: return the pre-sigmoid logits instead of probabilities
        (the losses use logits for numerical stability).

    Returns:
      ``(s, f)``: s (...,) anomaly probabilities in [0, 1] (or logits), f
      (..., D) adapted features.
    """
    f = self.adapt(x)
    h = f
    for layer in self.disc[:-1]:
      h = nn.leaky_relu(layer(h), self.negative_slope)
    z = self.disc[-1](h)[..., 0]
    return (z if return_logits else jax.nn.sigmoid(z)), f


def init_params(key: jax.Array, dim: int, *,
                hidden: Sequence[int] = (1024, 128)) -> dict:
  """Initial LocalNet parameters for D = ``dim``."""
  return LocalNet(dim, tuple(hidden)).init(key, jnp.zeros((1, dim)))["params"]
