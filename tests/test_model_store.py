"""The app's model store: bounded in bytes and entries, refusals remembered, each model loaded once."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import torch

from explorer.cache import ModelStore, model_bytes
from glom_viz.errors import CheckpointError


@dataclass
class Loaded:
    model: torch.nn.Module


def loader(floats: int, calls: list | None = None):
    def load() -> Loaded:
        if calls is not None:
            calls.append(floats)
        return Loaded(torch.nn.Linear(floats, 1, bias=False))
    return load


def test_models_are_counted_by_their_weights_and_buffers():
    module = torch.nn.BatchNorm1d(10)  # 20 weights, 21 buffer values (running stats and the count)
    assert model_bytes(module) == 20 * 4 + 20 * 4 + 8


def test_the_least_recently_used_go_first_beyond_the_byte_bound():
    store = ModelStore(max_bytes=3 * 1000 * 4, max_entries=10)
    for key in "abc":
        store.get(key, loader(1000))
    assert store.keys() == ["a", "b", "c"] and store.bytes == 12_000
    store.get("a", loader(1000))  # used again: now the most recent
    store.get("d", loader(1500))  # 6 KB more: b and c make room
    assert store.keys() == ["a", "d"] and store.bytes <= 12_000


def test_entries_are_bounded_too_and_a_model_above_the_bound_still_serves_its_visitor():
    store = ModelStore(max_bytes=10**9, max_entries=2)
    for key in "abc":
        store.get(key, loader(10))
    assert store.keys() == ["b", "c"]
    huge = ModelStore(max_bytes=100, max_entries=4)
    assert huge.get("big", loader(1000)).model.weight.numel() == 1000  # held alone, until the next one


def test_refusals_are_remembered_and_said_again():
    store = ModelStore(max_bytes=10**6, max_entries=4)
    calls = []

    def refused():
        calls.append(1)
        raise CheckpointError("'x.pt' is a zip bomb", fields=("image_size",), read={"dim": 16})

    for _ in range(3):
        with pytest.raises(CheckpointError, match="zip bomb") as caught:
            store.get("x", refused, refusals=(CheckpointError,))
        # said again with what a config form asks for, not only the message
        assert caught.value.fields == ("image_size",) and caught.value.read == {"dim": 16}
    assert calls == [1]  # parsed once
    with pytest.raises(ValueError):  # anything else is not remembered
        store.get("y", lambda: (_ for _ in ()).throw(ValueError("bug")), refusals=(CheckpointError,))
    assert "y" not in store.keys()


def test_visitors_asking_for_the_same_model_at_once_load_it_once():
    store = ModelStore(max_bytes=10**6, max_entries=4)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return Loaded(torch.nn.Linear(4, 1))

    got = []
    threads = [threading.Thread(target=lambda: got.append(store.get("m", slow))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1] and len({id(g) for g in got}) == 1
