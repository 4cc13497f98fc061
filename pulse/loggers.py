"""Lightning loggers as pulse configures them (``configs/logger/``).

:class:`WandbLogger` is Lightning's W&B logger without the ``anonymous`` argument it always hands to
``wandb.init``: Lightning passes ``anonymous=None`` when it is not asked for, and W&B (0.31 here) warns
"The anonymous setting has no effect and will be removed" on every run for any value but unset.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger"]


class WandbLogger(_LightningWandbLogger):
    """``pytorch_lightning.loggers.WandbLogger`` (same arguments) that leaves W&B's ``anonymous`` unset.

    An explicit ``anonymous=True`` is still passed on (W&B then warns, as it does for anyone who asks).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init = getattr(self, "_wandb_init", None)  # what Lightning hands to wandb.init
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
