"""What training leaves out of the user's output: Lightning's info lines, and warnings named here that do
not apply to medlite (used by `fit` and by the ranks a launcher started, `train.launched`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities.warnings import PossibleUserWarning


def quiet_lightning_info() -> None:
    # Lightning's info lines (GPU/TPU available, LOCAL_RANK...) would drown the pipeline's own
    # output; its warnings still show.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def training_warnings() -> Iterator[None]:
    """Warnings during training reach the user, except these named ones, which do not apply here."""
    with warnings.catch_warnings():
        # TrainData's loaders only draw index batches; the images are gathered on the device from
        # tensors already in memory, so DataLoader workers would add process start-up and IPC, no speed.
        warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers", category=PossibleUserWarning)
        # Lightning 2.6's own pytree helper (lightning/pytorch/utilities/_pytree.py) builds torch's
        # deprecated `LeafSpec()`; a note for Lightning's maintainers, nothing a medlite user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        # The same for LightningModule.all_gather (DDP validation), built on a deprecated torch function.
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                                category=FutureWarning)
        yield
