"""Weight and data I/O: what pulse cannot ship, fetched, verified and read as data.

``cache`` (where files live, sha256, atomic writes), ``fetch`` (resumable, checksum-verified downloads and
PyPI look-ups), ``safe_pickle`` (allow-listed unpickling and weights-only torch loading), ``convert``
(TensorFlow-era StyleGAN pickles to tensors, no TensorFlow, no code run), ``weights`` (the official PULSE
weights), ``celeba`` (real CelebA photos out of a pinned wheel) and ``cli_fetch`` (``pulse-fetch``).

Submodules are imported by name (``from pulse.io.fetch import download``); this package imports none of
them, so loading one never loads the others.
"""
