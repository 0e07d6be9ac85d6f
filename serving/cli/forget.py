"""`lethe forget`, `lethe queue`, `lethe worker`: forget requests from the command line.

`lethe forget` goes through the running server's API, like any client, so the guard is active
when it returns. `lethe queue` reads the queue store; `lethe worker` runs a worker
(serving/forget/worker.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from ..errors import LetheError
from .common import add_command, config_of, emit, registered


class ForgetClientError(LetheError):
    """The server refused or could not take a forget request; the message says why."""


def _client(args, config):
    import httpx

    key = args.api_key or os.environ.get("LETHE_ADMIN_KEY") or next(
        iter(config.server.admin_keys), None)
    url = args.url or f"http://{config.server.host}:{config.server.port}"
    return httpx.Client(base_url=url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"} if key else {})


def _call(client, method: str, path: str, **kw) -> dict:
    import httpx

    try:
        response = client.request(method, path, **kw)
    except httpx.HTTPError as e:
        raise ForgetClientError(f"cannot reach the server at {client.base_url} ({e}); is "
                                "`lethe serve` running?") from e
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise ForgetClientError(f"{response.status_code}: {message}")
    return response.json()


def _line(status: dict) -> str:
    return (f"{status['id']}: {status['state']}, {status['samples']} sample(s)"
            + (f", owner {status['owner']}" if status.get("owner") else "")
            + (f", attempts {status['attempts']}" if status.get("attempts") else "")
            + (f", last error: {status['reason']}" if status.get("reason") else "")
            + (f", next attempt at {time.strftime('%H:%M:%S', time.localtime(status['retry_at']))}"
               if status["state"] == "failed" and status.get("retry_at") else ""))


def cmd_forget(args) -> None:
    config = config_of(args)
    body = {"owner": args.owner} if args.owner else {"sample_ids": args.sample_id}
    if args.prompt:
        body["prompts"] = args.prompt
    with _client(args, config) as client:
        start = time.perf_counter()
        status = _call(client, "POST", "/v1/forget", json=body)
        accepted = time.perf_counter() - start
        reported = None
        while args.wait and status["state"] != "completed":
            if status["state"] == "failed" and status["attempts"] != reported:
                print(f"lethe: attempt {status['attempts']} failed ({status['reason']}); "
                      "retrying", file=sys.stderr)  # retried until it is exact: keep waiting
                reported = status["attempts"]
            time.sleep(0.5)
            status = _call(client, "GET", f"/v1/forget/{status['id']}")
        receipt = (_call(client, "GET", f"/v1/forget/{status['id']}/receipt")
                   if status["state"] == "completed" else None)
    emit(args, {**status, "accepted_seconds": round(accepted, 3), "receipt": receipt},
         [_line(status)] + [
             f"shard {s['shard']}: {s['old_version']} -> {s['new_version'] or '(none: empty)'}"
             for s in (receipt or {}).get("shards", [])])


def cmd_queue(args) -> None:
    from ..forget import open_queue

    config = config_of(args)
    requests = open_queue(config.queue_target, config.forget.synchronous,
                          config.secret_file).list()
    if args.state:
        requests = [r for r in requests if r.state == args.state]
    rows = [r.public() for r in requests]
    emit(args, {"requests": rows}, [_line(row) for row in rows] or ["(no forget requests)"])


def cmd_worker(args) -> None:
    from ..forget import Worker
    from ..logs import configure_logging

    configure_logging()
    worker = Worker.from_config(config_of(args))
    if args.once:
        done = worker.run_once()
        emit(args, {"completed": done}, [f"completed {len(done)} request(s)"])
    else:
        worker.run(threading.Event())


def add_commands(sub) -> None:
    """`lethe forget`, `lethe queue`, `lethe worker`."""
    forget = add_command(sub, "forget", cmd_forget, "ask the running server to forget an owner's "
                     "data or samples (guarded at once, retrained in the background)")
    target = forget.add_mutually_exclusive_group(required=True)
    target.add_argument("--owner", help="forget every sample of this owner")
    target.add_argument("--sample-id", nargs="+", help="forget these sample ids")
    forget.add_argument("--prompt", action="append",
                        help="more content to guard, e.g. how users ask about it (repeatable)")
    forget.add_argument("--wait", action="store_true",
                        help="wait until the request is exact (completed); failed attempts are "
                             "reported and retried")
    forget.add_argument("--url", help="server URL (default http://server.host:server.port)")
    forget.add_argument("--api-key", help="admin key (default $LETHE_ADMIN_KEY or the first of "
                                          "server.admin_keys)")
    queue = add_command(sub, "queue", cmd_queue, "list forget requests and their states")
    queue.add_argument("--state", **registered("serving.forget", "STATES", "STATE"),
                       help="only requests in this state")
    worker = add_command(sub, "worker", cmd_worker,
                         "run the forget worker (`lethe serve` starts one)")
    worker.add_argument("--once", action="store_true",
                        help="one round: take the waiting requests, retrain, complete, exit")
