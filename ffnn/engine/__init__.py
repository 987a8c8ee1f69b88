"""What runs the training of compare and tune: the ``Engine`` interface (``base``), its local
implementation (``process``: training processes on this machine) and Ray's (``ray``: tasks on a
cluster, imported where ``--ray`` asks for it).

Importing this package imports no torch and no Ray: a training process binds itself to its parent first.
"""

from .base import Engine, Setup, Work
from .process import ProcessEngine, worker_count

__all__ = ["Engine", "ProcessEngine", "Setup", "Work", "worker_count"]
