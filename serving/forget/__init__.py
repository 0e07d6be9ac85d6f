"""Forget requests: the durable queue (queue.py), the server's half that guards a request the
moment it is accepted (service.py), and the worker that makes it exact in the background
(worker.py, its own process, kept running by supervisor.py)."""

from base.lazy import lazy_surface

__getattr__, __dir__, __all__ = lazy_surface(__name__, {
    "queue": ["ACTIVE", "STATES", "ForgetQueue", "ForgetRequest", "QueueError",
              "UnknownRequestError", "open_queue"],
    "service": ["ForgetService"],
    "supervisor": ["WorkerSupervisor"],
    "worker": ["Worker"],
})
