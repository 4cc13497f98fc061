"""Solvers: searches of a generator's latent space for images that downscale to the input.

``pulse`` is PULSE itself (spherical projected Adam over the latent, GEOCROSS), ``ilo`` is Intermediate
Layer Optimization on top of it. Both return a :class:`pulse.solvers.pulse.SearchResult`. Submodules are
imported by name; ``from pulse import PulseSolver, ILOSolver`` also works.
"""
