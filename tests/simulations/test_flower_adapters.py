"""The Flower adapters: each refuses another Flower release loudly, before it patches or calls
anything, and the patches that can be undone are undone.

The installed Flower's version, as the adapters see it, is faked by monkeypatching
:func:`fedssl.flower_version.installed_flower_version`.
"""

from __future__ import annotations

import pytest

from fedssl import flower_version
from fedssl.flower_version import FlowerVersionError, require_flower
from fedssl.server import flower_strategy_adapter, flower_superlink_adapter
from fedssl.simulations import dispatch, flower_engine_adapter

ADAPTERS = [flower_engine_adapter, flower_superlink_adapter, flower_strategy_adapter]


@pytest.fixture
def other_flower(monkeypatch: pytest.MonkeyPatch) -> str:
    """Pretend Flower 1.42.0 is installed."""
    monkeypatch.setattr(flower_version, "installed_flower_version", lambda: "1.42.0")
    return "1.42.0"


def test_the_adapters_were_written_for_the_installed_flower() -> None:
    import flwr

    assert flower_version.installed_flower_version() == flwr.__version__ == "1.41.0"
    for adapter in ADAPTERS:
        assert adapter.FLOWER_VERSION == "1.41.0"
        adapter.check()  # no error


def test_the_error_names_both_versions_and_the_concern(other_flower: str) -> None:
    with pytest.raises(FlowerVersionError) as info:
        require_flower("1.41.0", concern="the widget patch")
    text = str(info.value)
    assert "Flower 1.41.0" in text and f"Flower {other_flower} is installed" in text
    assert "the widget patch" in text


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.__name__.rpartition(".")[2])
def test_every_adapter_refuses_another_release(adapter, other_flower: str) -> None:
    with pytest.raises(FlowerVersionError, match=r"1\.41\.0.*1\.42\.0"):
        adapter.check()


def test_the_engine_patches_refuse_another_release_and_patch_nothing(other_flower: str) -> None:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    before = (vce_api.add_messages_to_queue, raybackend.RayBackend)
    with pytest.raises(FlowerVersionError):
        dispatch.install(pipeline_depth=2)
    with pytest.raises(FlowerVersionError), dispatch.installed(pipeline_depth=2):
        pass
    assert (vce_api.add_messages_to_queue, raybackend.RayBackend) == before
    with pytest.raises(FlowerVersionError):
        dispatch.tune_grid(_grid())


def test_the_engine_patches_are_undone() -> None:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    flower = (vce_api.add_messages_to_queue, raybackend.RayBackend)
    assert flower == (flower_engine_adapter.FLOWER_DISPATCHER,
                      flower_engine_adapter.FLOWER_RAY_BACKEND)
    assert not flower_engine_adapter.is_installed()
    with dispatch.installed(pipeline_depth=3):
        assert flower_engine_adapter.is_installed()
        assert raybackend.RayBackend is flower_engine_adapter.PipelinedRayBackend
        assert raybackend.RayBackend.depth == 3
        assert vce_api.add_messages_to_queue.fedssl_dispatcher is dispatch.add_messages_to_queue
    assert (vce_api.add_messages_to_queue, raybackend.RayBackend) == flower
    with pytest.raises(KeyError), dispatch.installed(pipeline_depth=2):  # undone on errors too
        raise KeyError("boom")
    assert (vce_api.add_messages_to_queue, raybackend.RayBackend) == flower
    dispatch.install(pipeline_depth=2)
    dispatch.install(pipeline_depth=2)  # idempotent
    dispatch.uninstall()
    assert (vce_api.add_messages_to_queue, raybackend.RayBackend) == flower
    assert not flower_engine_adapter.is_installed()


def _grid():
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    return InMemoryGrid(state_factory=factory)


def test_the_superlink_patch_refuses_another_release_and_patches_nothing(
        other_flower: str) -> None:
    from flwr.superlink import extensions

    from fedssl.server.superlink_guard import LocalControlGuard

    before = extensions.get_middleware
    with pytest.raises(FlowerVersionError):
        flower_superlink_adapter.prepend_middleware(LocalControlGuard)
    assert extensions.get_middleware is before
    with pytest.raises(FlowerVersionError):
        flower_superlink_adapter.run_flower_superlink(["--help"])
    with pytest.raises(FlowerVersionError):
        flower_superlink_adapter.build_fab({"pyproject.toml": b""})


def test_the_control_api_wait_reports_another_release_as_it_is(other_flower: str,
                                                                tmp_path) -> None:
    """Not as an unusable CA certificate (what other errors making the client mean)."""
    import socket

    from fedssl.server.superlink_control import wait_for_control_api

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(FlowerVersionError):
            wait_for_control_api(address, tmp_path / "ca.crt", timeout=5.0)


def test_the_superlink_middleware_patch_is_undone() -> None:
    from flwr.superlink import extensions

    from fedssl.server.superlink_guard import LocalControlGuard

    flower = extensions.get_middleware
    with flower_superlink_adapter.middleware_prepended(LocalControlGuard):
        stack = extensions.get_middleware()
        assert stack[0].cls is LocalControlGuard  # outermost: before any of Flower's
        assert stack[1:] == flower()
    assert extensions.get_middleware is flower
    undo = flower_superlink_adapter.prepend_middleware(LocalControlGuard)
    assert extensions.get_middleware is not flower
    undo()
    assert extensions.get_middleware is flower


def test_the_strategy_helpers_refuse_another_release(other_flower: str) -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from fedssl.server.strategy import FedSSLStrategy

    strategy = FedSSLStrategy(reference={"w": np.zeros(2, np.float32)})
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    with pytest.raises(FlowerVersionError):
        strategy.messages(arrays, ConfigRecord({}), [1, 2])
    with pytest.raises(FlowerVersionError):
        flower_strategy_adapter.check()


def test_the_strategy_helpers_build_flowers_messages(flower_identity) -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from fedssl.server.strategy import FedSSLStrategy

    strategy = FedSSLStrategy(reference={"w": np.zeros(2, np.float32)})
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    messages = strategy.messages(arrays, ConfigRecord({"x": 1}), [3, 5])
    assert [m.metadata.dst_node_id for m in messages] == [3, 5]
    assert all(m.metadata.message_type == "train" for m in messages)


def test_an_adapter_whose_internals_moved_fails_at_import_with_the_version_error() -> None:
    """A release that moved a module an adapter imports at module level: the adapter's own
    import raises FlowerVersionError naming the versions, not a bare ModuleNotFoundError (run
    in a fresh interpreter with the internal module made unimportable)."""
    import subprocess
    import sys

    adapter, internal = ("fedssl.simulations.flower_engine_adapter",
                         "flwr.server.superlink.fleet.vce")
    code = (f"import sys; sys.modules[{internal!r}] = None\n"
            "from fedssl.flower_version import FlowerVersionError\n"
            f"try:\n    import {adapter}\n"
            "except FlowerVersionError as exc:\n    print('VERSION-ERROR', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VERSION-ERROR" in done.stdout and "written for Flower 1.41.0" in done.stdout
    assert "cannot import" in done.stdout
