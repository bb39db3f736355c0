"""Seeds for independent random streams, derived from the run seed.

Every random stream in unirobust (data order and augmentation per epoch, each expert's attack
starts, validation attacks, split selection) has its own ``torch.Generator`` seeded by
``derive_seed(run_seed, stream ids...)``. Streams never share the global RNG, which is what makes
resume bit-exact and sequential and torchrun layouts agree (generalist.md §3.4).
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into one well-spread 63-bit seed (a SplitMix64 chain); pure, no global state."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1
