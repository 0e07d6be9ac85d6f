"""`lethe demo`: the whole product on fictitious people, narrated, every claim checked.

In a data directory of its own (`--home`, default ~/.cache/lethe-demo: wiped at start except the
prepared model), it generates people with two facts each, trains the shard adapters until the
model recites the facts, starts `lethe serve`, and then, with the official openai client:

  1. asks a question only one person's data answers: the answer holds the fact;
  2. POST /v1/forget for that person: the time until the request is durable and guarded (202);
  3. asks the question and a rewording: answers without the fact, in the same response shape;
  4. asks another person's question: still answered;
  5. waits for the worker's exact retrain: the shard's old and new versions, the receipt, the
     answer still without the fact;
  6. prints the timings.

A step whose claim does not hold ends the demo with exit 1, naming the step (`DemoFailed`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import LetheError, UsageError
from .common import add_command, positive_int, registered

DEFAULT_HOME = Path("~/.cache/lethe-demo")
MARKER = ".lethe-demo"  # in a home the demo made: the only kind it empties
# The 202 may already read "retraining" when a worker claimed the request first: the guard
# holds in both states, until the request completes.
GUARDED_STATES = ("guarded", "retraining")
LIVES = re.compile(r"^Where does (?P<name>.+) live\?$")  # synth_people's fact 0


class DemoFailed(LetheError):
    """A claim of the demo did not hold; the message names the step."""


@dataclass(frozen=True)
class Person:
    owner: str
    question: str  # "Where does NAME live?"
    reworded: str  # the same question in other words
    city: str  # the fact only this person's data teaches


def people_of(samples) -> list[Person]:
    people = []
    for s in samples:
        match = LIVES.match(s.prompt)
        if match:
            name = match["name"]
            people.append(Person(s.owner, s.prompt, f"Tell me where {name} lives.",
                                 s.response.split(" lives in ")[-1].rstrip(".")))
    return people


class Narrator:
    """Lines for a person (stdout; stderr with --json) and the record that --json prints."""

    def __init__(self, as_json: bool):
        self.out = sys.stderr if as_json else sys.stdout
        self.steps: list[dict] = []
        self.timings: dict[str, float] = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, number: int, title: str, ok: bool, failure: str, **details) -> None:
        self.steps.append({"step": number, "title": title, "ok": ok, **details})
        self.say(f"{'ok' if ok else 'FAILED'}  step {number}: {title}")
        if not ok:
            raise DemoFailed(f"step {number} ({title}): {failure}")

    def time(self, name: str, seconds: float) -> float:
        self.timings[name] = round(seconds, 3)
        return seconds


def cmd_demo(args) -> None:
    from ..config import load_config

    if args.people < 2:
        raise UsageError(f"--people must be at least 2 (one to forget, one to keep), got "
                         f"{args.people}")
    home = Path(args.home).expanduser()
    config_file = args.config or resources.files("serving").joinpath("demo.yaml")
    config = load_config(config_file, overrides={"home": str(home), "engine.name": args.engine})
    narrator = Narrator(args.json)
    result = {"ok": False, "engine": config.engine.name, "people": args.people,
              "home": str(home), "steps": narrator.steps, "timings": narrator.timings}
    start = time.perf_counter()
    try:
        result.update(_run(config, args.people, narrator))
        result["ok"] = True
    except DemoFailed as e:
        result["failed"] = str(e)
        raise
    finally:
        narrator.time("total_s", time.perf_counter() - start)
        if args.json:
            print(json.dumps(result, indent=2))
    narrator.say(_closing(narrator.timings))


def _fresh_home(home: Path) -> None:
    """Empty `home` but for the prepared model (`<home>/models`): each run starts untrained.
    Only a folder the demo made (it holds MARKER) or an empty one: never a user's data."""
    if home.exists() and any(home.iterdir()) and not (home / MARKER).exists():
        raise UsageError(f"--home {home} is not empty and was not made by `lethe demo`; the demo "
                         "empties its home at each start: give it a folder of its own")
    home.mkdir(parents=True, exist_ok=True)
    for entry in home.iterdir():
        if entry.name not in ("models", MARKER):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    (home / MARKER).touch()


def _train(config, people: int, narrator: Narrator) -> list[Person]:
    from adapters import synth_people

    from .shards import train_shards

    _fresh_home(config.home_dir)
    samples = synth_people(people, seed=0, facts_per_person=2)
    narrator.say(f"Training {config.shards.count} shard adapters on {len(samples)} facts about "
                 f"{people} fictitious people ({config.home_dir})")
    start = time.perf_counter()
    train_shards(config, samples)
    narrator.time("train_s", time.perf_counter() - start)
    return people_of(samples)


def _run(config, people: int, narrator: Narrator) -> dict:
    import openai

    from ..launch import ServerProcess

    persons = _train(config, people, narrator)
    narrator.say(f"Starting `lethe serve` on the {config.engine.name} engine")
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="server-", dir=config.home_dir))
    try:
        server = ServerProcess(config.model_dump(mode="json"), workdir, ready_timeout=600)
    except RuntimeError as e:
        raise DemoFailed(f"the server did not start: {e}") from e
    narrator.time("server_start_s", time.perf_counter() - start)
    keys = config.server
    client = server.client(keys.api_keys[0] if keys.api_keys else "none")
    admin = {"Authorization": f"Bearer {(keys.admin_keys or keys.api_keys or ['none'])[0]}"}

    def ask(question: str):
        try:
            response = client.chat.completions.create(
                model=config.model.name, messages=[{"role": "user", "content": question}],
                max_tokens=24, temperature=0)
        except openai.APIError as e:
            raise DemoFailed(f"the server answered {question!r} with an error: {e}") from e
        return response, response.choices[0].message.content

    try:
        return _narrate(persons, ask, _Admin(server.url, admin), narrator)
    finally:
        server.stop()


@dataclass(frozen=True)
class _Admin:
    """The forget endpoints, with the admin key when the config sets keys."""

    url: str
    headers: dict

    def post(self, path: str, body: dict):
        import httpx

        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=60)

    def get(self, path: str) -> dict:
        import httpx

        return httpx.get(self.url + path, headers=self.headers, timeout=60).json()


def _narrate(persons: list[Person], ask, api: _Admin, narrator: Narrator) -> dict:
    answered = {}
    for person in persons:
        _, answer = ask(person.question)
        answered[person.owner] = person.city in answer
    learned = [p for p in persons if answered[p.owner]]
    target, others = (learned[0], learned[1:]) if learned else (persons[0], [])
    before, answer = ask(target.question)
    narrator.say(f"\n  Q: {target.question}\n  A: {answer}")
    narrator.step(1, "a fact only one person's data teaches is answered",
                  target.city in answer and bool(others),
                  f"after training the model answers {len(learned)} of {len(persons)} people's "
                  "facts; the demo needs two (train longer: train.epochs)",
                  question=target.question, answer=answer, fact=target.city,
                  people_answered=f"{len(learned)}/{len(persons)}")

    posted = time.perf_counter()
    accepted = api.post("/v1/forget", {"owner": target.owner})
    seconds = narrator.time("forget_accepted_s", time.perf_counter() - posted)
    request = accepted.json()
    narrator.say(f"\n  POST /v1/forget {{\"owner\": \"{target.owner}\"}} -> {accepted.status_code} "
                 f"{request.get('state')} in {seconds * 1000:.0f} ms")
    narrator.step(2, "the forget request is durable and guarded at once",
                  accepted.status_code == 202 and request.get("state") in GUARDED_STATES,
                  f"POST /v1/forget answered {accepted.status_code}: {request}",
                  status=accepted.status_code, state=request.get("state"),
                  milliseconds=round(seconds * 1000, 1))

    start = time.perf_counter()
    after, answer = ask(target.question)
    narrator.time("guarded_answer_s", time.perf_counter() - start)
    _, reworded = ask(target.reworded)
    narrator.say(f"\n  Q: {target.question}\n  A: {answer}\n  Q: {target.reworded}\n  A: {reworded}")
    same_shape = _shape(before.model_dump()) == _shape(after.model_dump())
    narrator.step(3, "the question and a rewording are answered without the fact, in the same "
                  "response shape", target.city not in (answer + reworded) and same_shape,
                  f"the answers {answer!r} / {reworded!r} (fact {target.city!r}), same response "
                  f"shape: {same_shape}", answer=answer, reworded=reworded, same_shape=same_shape)

    other = others[0]
    _, other_answer = ask(other.question)
    narrator.say(f"\n  Q: {other.question}\n  A: {other_answer}")
    narrator.step(4, "another person's fact is still answered", other.city in other_answer,
                  f"{other_answer!r} lacks {other.city!r}", question=other.question,
                  answer=other_answer, fact=other.city)

    narrator.say("\n  the worker retrains the shard without the forgotten facts...")
    status = _wait_completed(api, request["id"], timeout=900)
    narrator.time("forget_completed_s", time.perf_counter() - posted)
    receipt = api.get(f"/v1/forget/{request['id']}/receipt")
    _, answer = ask(target.question)
    shards = receipt.get("shards", [])
    for shard in shards:
        narrator.say(f"  shard {shard['shard']}: version {shard['old_version']} -> "
                     f"{shard['new_version']}, forgotten ids absent: "
                     f"{shard['forgotten_ids_absent']}")
    narrator.say(f"  receipt: {json.dumps(receipt)}\n\n  Q: {target.question}\n  A: {answer}")
    exact = (status["state"] == "completed" and bool(shards) and target.city not in answer
             and all(s["new_version"] != s["old_version"] and s["forgotten_ids_absent"]
                     for s in shards))
    narrator.step(5, "the exact retrain completes: a new shard version without the facts",
                  exact, f"state {status['state']}, receipt {receipt}, answer {answer!r}",
                  answer=answer)
    narrator.step(6, "timings", True, "", **narrator.timings)
    return {"receipt": receipt}


def _wait_completed(api: _Admin, request_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = api.get(f"/v1/forget/{request_id}")
        if status["state"] == "completed" or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _shape(value):
    """The structure of a JSON value without its content: keys, list lengths, types."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items()) if k not in ("id", "created")}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def _closing(timings: dict) -> str:
    rows = [("forget request durable and guarded (202)", timings.get("forget_accepted_s")),
            ("first answer after it", timings.get("guarded_answer_s")),
            ("exact: shard retrained and published (from the POST)",
             timings.get("forget_completed_s")),
            ("training the shards", timings.get("train_s")),
            ("server start", timings.get("server_start_s")),
            ("the whole demo", timings.get("total_s"))]
    table = "\n".join(f"  {name:<54} {seconds:8.2f} s" for name, seconds in rows
                      if seconds is not None)
    return f"""
Timings
{table}

The same with your own data (JSONL: id, owner, prompt, response):
  lethe train --data my_data.jsonl --shards 4       # shard adapters, in $LETHE_HOME
  lethe serve                                       # OpenAI-compatible API on :8000
  lethe forget --owner alice --wait                 # guarded at once, exact after the retrain
"""


def add_commands(sub) -> None:

    demo = add_command(sub, "demo", cmd_demo,
                       "train, serve and forget on fictitious people, narrated and checked")
    demo.add_argument("--engine", **registered("serving.engines", "engine_names", "ENGINE"),
                      help="overrides engine.name")
    demo.add_argument("--people", type=positive_int, default=6,
                      help="fictitious people, two facts each (at least 2)")
    demo.add_argument("--home", type=Path, default=DEFAULT_HOME,
                      help="the demo's own data directory (wiped at start but for the model)")
