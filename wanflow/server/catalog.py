"""The models an API server offers: its own (``jobs.Models``, loaded or declared) and those the workers registered in
the store, live or not. A job names one; a job for a model that no live worker holds is taken and waits, and its view
says so ("no worker for model X") until a worker holding it starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from wanflow.server.jobs import Models
from wanflow.server.store import JobStore
from wanflow.tasks import TASKS, Task


class Catalog:
    """Model names, their tasks (with their checkpoints' defaults) and how many live workers hold each; the store's
    registry is read at most once per ``ttl`` seconds."""

    def __init__(self, local: Models, store: Callable[[], JobStore | None], serves: bool = True, ttl: float = 1.0):
        self.local, self.store, self.ttl = local, store, ttl
        self.serves = serves  # this process runs its own worker, on the local models
        self.cached: tuple[float, dict[str, dict]] = (-float("inf"), {})
        self.lock = threading.Lock()

    def registry(self, fresh: bool = False) -> dict[str, dict]:
        """{model: {"task", "overrides", "workers"}} from the store (read again now when ``fresh``)."""
        with self.lock:
            stamp, models = self.cached
            store = self.store()
            if store is not None and (fresh or time.monotonic() - stamp > self.ttl):
                models = store.models()
                self.cached = (time.monotonic(), models)
            return models

    def names(self) -> list[str]:
        """This server's own models first, in their order, then the other registered ones by name."""
        own = self.local.names
        return own + sorted(set(self.registry()) - set(own))

    def task(self, name: str) -> Task | None:
        """The task of model ``name`` with its checkpoint's defaults, else the registry's entry of that name."""
        if name in self.local.sources:
            return self.local.task(name)
        declared = self.registry().get(name)
        if declared is not None and declared["task"] in TASKS:
            return TASKS[declared["task"]].with_overrides(declared["overrides"])
        return TASKS.get(name)

    def peek(self, name: str) -> object | None:
        """The model's pipeline when it is loaded in this process."""
        return self.local.peek(name)

    def workers(self, name: str) -> int:
        """How many live workers hold model ``name`` (this process's own counts from its start)."""
        count = self.registry().get(name, {}).get("workers", 0)
        return max(count, 1) if self.serves and name in self.local.sources else count

    def extends_prompts(self, name: str) -> bool:
        """Whether a worker holding model ``name`` (this process's own, or any registered one) extends prompts."""
        return self._own_extender(name) or bool(self.registry().get(name, {}).get("extends_prompts"))

    def _own_extender(self, name: str) -> bool:
        """This process runs model ``name``'s jobs itself, with a prompt extender."""
        return self.serves and name in self.local.sources and self.local.prompt_extender is not None

    def no_extender(self, name: str) -> str:
        """Why a request with ``extend_prompt`` for model ``name`` is refused."""
        if self.serves and name in self.local.sources:
            return "this server extends no prompts: start it with --prompt_extend_model MODEL"
        return f"no worker holding model {name} extends prompts: start one with wanflow worker --prompt_extend_model"

    def model_for(self, name: str) -> str | None:
        """The model a request means by ``name``: a model of that name, else the first one that runs task ``name``.
        A name the cached registry lacks is looked up again in the store first: a worker may have registered it
        within the cache's ``ttl`` (a request for it is not refused then)."""
        found = self._model_for(name)
        if found is None and self.store() is not None:
            self.registry(fresh=True)
            found = self._model_for(name)
        return found

    def _model_for(self, name: str) -> str | None:
        names = self.names()
        if name in names:
            return name
        return next((model for model in names if (spec := self.task(model)) is not None and spec.name == name), None)

    def waiting(self, job: dict) -> str | None:
        """Why a queued job does not run: no live worker holds its model (or, for a job whose prompt is to be
        extended, none that extends prompts)."""
        model = job.get("model") or job["task"]
        if job["status"] != "queued":
            return None
        if not self.workers(model):
            return f"no worker for model {model}"
        if job.get("extend_prompt") and not self._extenders(model):
            return f"no live worker for model {model} extends prompts"
        return None

    def _extenders(self, model: str) -> int:
        return int(self._own_extender(model)) + self.registry().get(model, {}).get("extenders", 0)
