"""Solvers: methods that turn a batch of low-resolution inputs into high-resolution samples.

``pulse`` is PULSE itself (spherical projected Adam over the latent, GEOCROSS), ``ilo`` is Intermediate
Layer Optimization on top of it. Every solver follows :class:`pulse.solvers.base.Solver` and returns a
:class:`pulse.solvers.pulse.SearchResult`, so the runner, the outputs, the metrics and the tables take any
of them. Submodules are imported by name; ``from pulse import PulseSolver, ILOSolver`` also works.

A solver is chosen by config alone: ``configs/solver/NAME.yaml`` names a factory with ``_target_``, and
``run.py`` calls it with the run's components as keyword arguments, ``generator``, ``loss``, ``optimizer``
(a factory ``params -> Optimizer``), ``downscale`` (a factory ``factor -> nn.Module``), ``schedule`` (the
learning-rate schedule's name) and ``seed``, plus the config's own keys. A factory takes the components it
uses and may ignore the others (a feed-forward baseline has no optimizer). Adding a solver means a module
here and a config file there; ``run.py`` does not change.
"""
