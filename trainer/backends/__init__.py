"""How roles start and how bytes move: ``local`` (threads of one process) and ``dist``
(a process per role over ``torch.distributed``). Both run ``trainer.run.loop.run_role``."""

__all__ = ["local", "dist"]  # what the rest may import
