"""DDP: what the launching process needs from rank 0 once the forked ranks have trained.

Lightning hands back the final weights and the best checkpoint's path itself; the per-epoch
history and the validation counts live on rank 0's module, so rank 0 writes them and the
launching process reads them (`ShareFacts.load`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch.multiprocessing

FACTS_FILE = "ddp_result.json"


class ShareFacts(L.Callback):
    """Rank 0 writes its module's history and validation counts into `folder`; `load` reads them back."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        facts = {"history": module.history, "val_passes": module.val_passes, "auc_missing": module.auc_missing,
                 "world_size": trainer.world_size}
        (self.folder / FACTS_FILE).write_text(json.dumps(facts))

    @staticmethod
    def load(folder: Path, module) -> None:
        path = Path(folder) / FACTS_FILE
        facts = json.loads(path.read_text())
        module.history[:] = facts["history"]
        module.val_passes, module.auc_missing = facts["val_passes"], facts["auc_missing"]
        path.unlink()


@contextmanager
def spawn_sharing(spawned: bool) -> Iterator[None]:
    """While ranks are spawned, CPU tensors of the pickled trainer travel as named shared-memory
    files: the default (file descriptors passed over a socket) failed on the 2-core VM ("unable
    to resize file ... Invalid argument" in every rank), the named files did not."""
    if not spawned:
        yield
        return
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
