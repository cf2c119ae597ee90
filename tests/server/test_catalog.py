"""The models an API server offers: its own and the workers' from the store, whose registry is cached for ``ttl``
seconds; a model a worker registered within that time is found all the same (the store is read again before a
request for it is refused)."""

from types import SimpleNamespace

from wanflow.server.catalog import Catalog


class Store:
    """The store's registry as ``Catalog`` reads it, counting the reads."""

    def __init__(self):
        self.registered: dict[str, dict] = {}
        self.reads = 0

    def models(self) -> dict[str, dict]:
        self.reads += 1
        return dict(self.registered)


def test_a_model_registered_within_the_cache_time_is_found():
    store = Store()
    catalog = Catalog(SimpleNamespace(names=[], sources={}, prompt_extender=None), lambda: store, serves=False, ttl=60)
    assert catalog.names() == [] and store.reads == 1  # cached for a minute from here
    store.registered["t2v-A14B"] = {"task": "t2v-A14B", "overrides": {}, "workers": 1}
    assert catalog.names() == []  # the cache, as intended for listing
    assert catalog.model_for("t2v-A14B") == "t2v-A14B" and store.reads == 2  # read again before refusing
    assert catalog.model_for("ti2v-5B") is None and store.reads == 3  # an unknown name costs one read
    assert catalog.names() == ["t2v-A14B"]
