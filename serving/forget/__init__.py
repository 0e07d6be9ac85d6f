"""Forget requests: the durable queue (queue.py), the server's half that guards a request the
moment it is accepted (service.py), and the worker that makes it exact in the background
(worker.py, its own process, kept running by supervisor.py)."""

from .queue import (ACTIVE, STATES, ForgetQueue, ForgetRequest, QueueError, UnknownRequestError,
                    open_queue)
from .service import ForgetService
from .supervisor import WorkerSupervisor
from .worker import Worker

__all__ = ["ACTIVE", "STATES", "ForgetQueue", "ForgetRequest", "ForgetService", "QueueError",
           "UnknownRequestError", "Worker", "WorkerSupervisor", "open_queue"]
