"""The client checks the server's global model against its own before decoding it (issue 15,
item 7): wrong-shaped, wrongly typed, extra, missing, oversized or non-finite arrays end in
:class:`GlobalModelError` naming the first parameter that does not fit, nothing of a declared
size is allocated, and the local model (and, through the ClientApp, the node's state and
ledger) is untouched; the round is refused, not crashed."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.client.app import LOCAL_MODEL_KEY, train
from fedssl.client.global_model import GlobalModelError, decode_global_model
from fedssl.npy_header import npy_header
from fedssl.server.app import CLIENT_KEYS, DEFAULTS
from fedssl.ssl_core.objectives import get_objective

SHAPE = (1, 40)


def _model() -> torch.nn.Module:
    return get_objective("simsiam").build_model(SHAPE)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _npy(value: np.ndarray, header_shape: tuple[int, ...] | None = None) -> bytes:
    """``.npy`` bytes of ``value``, its header optionally declaring another shape."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": value.dtype.str, "fortran_order": False,
        "shape": header_shape if header_shape is not None else value.shape})
    return buf.getvalue() + np.ascontiguousarray(value).tobytes()


def _global(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_the_servers_own_model_decodes_to_the_same_values() -> None:
    model, sender = _model(), _model()
    state = decode_global_model(ArrayRecord(sender.state_dict()), model)
    assert _same(dict(state), sender.state_dict())
    assert all(t.numpy().flags.writeable for t in state.values())
    # a subset of whole parts (shared = encoder) is a valid global model
    encoder = {k: v for k, v in sender.state_dict().items() if k.startswith("encoder.")}
    assert list(decode_global_model(ArrayRecord(encoder), model)) == list(encoder)


@pytest.mark.parametrize("form", ["fortran order", "version 2.0"])
def test_a_valid_header_other_than_np_saves_own_is_parsed_and_decoded(form: str) -> None:
    """The decoder skips parsing only a header byte-identical to ``np.save``'s; any other
    valid header (here Fortran order, or format version 2.0) is parsed and honoured."""
    model, sender = _model(), _model()
    name = _first_weight(model)
    ref = sender.state_dict()[name].numpy()
    buf = io.BytesIO()
    if form == "fortran order":
        np.save(buf, np.asfortranarray(ref))
    else:
        np.lib.format.write_array(buf, ref, version=(2, 0))
    assert not buf.getvalue().startswith(npy_header(ref.dtype.str, ref.shape))
    arrays = {k: Array(v.numpy()) for k, v in sender.state_dict().items()}
    arrays[name] = Array(dtype="float32", shape=ref.shape, stype="numpy.ndarray",
                         data=buf.getvalue())
    state = decode_global_model(ArrayRecord(arrays), model)
    assert _same(dict(state), sender.state_dict())


def _first_weight(model: torch.nn.Module) -> str:
    return next(k for k, v in model.state_dict().items() if v.dim() > 1)


def _cases(model: torch.nn.Module) -> dict[str, tuple[dict[str, Array], str]]:
    """Bad global models and the message each must give."""
    good = _global(model)
    name = _first_weight(model)
    ref = good[name]
    arrays = {k: Array(v) for k, v in good.items()}
    wide = np.zeros((ref.shape[0] + 1, *ref.shape[1:]), ref.dtype)
    last = next(reversed(good))
    return {
        "wrong shape": ({**arrays, name: Array(wide)},
                        f"parameter {name!r} has shape {wide.shape}, expected {ref.shape}"),
        "wrong dtype": ({**arrays, name: Array(ref.astype(np.float64))},
                        f"parameter {name!r} has dtype float64, expected float32"),
        "extra": ({**arrays, "encoder.backdoor": Array(np.zeros(3, np.float32))},
                  "parameter 'encoder.backdoor' is not in the local model"),
        "unknown part": ({**arrays, "evil.weight": Array(np.zeros(3, np.float32))},
                         "parameter 'evil.weight' is not in the local model"),
        "missing": ({k: v for k, v in arrays.items() if k != last},
                    f"parameter {last!r} of the shared part {last.split('.')[0]!r} is "
                    "missing"),
        "no encoder": ({k: v for k, v in arrays.items() if not k.startswith("encoder.")},
                       "it holds no encoder parameters"),
        "oversized data": ({**arrays, name: Array(dtype="float32", shape=ref.shape,
                                                  stype="numpy.ndarray",
                                                  data=_npy(ref) + bytes(1 << 20))},
                           f"parameter {name!r} is {len(_npy(ref)) + (1 << 20)} bytes, more "
                           "than its shape"),
        "trailing bytes": ({**arrays, name: Array(dtype="float32", shape=ref.shape,
                                                  stype="numpy.ndarray",
                                                  data=_npy(ref) + b"\0" * 8)},
                           f"parameter {name!r} has {ref.nbytes + 8} bytes of values"),
        "header declares a huge array": (
            {**arrays, name: Array(dtype="float32", shape=ref.shape, stype="numpy.ndarray",
                                   data=_npy(ref, header_shape=(1 << 40,)))},
            f"parameter {name!r}: its .npy header declares shape ({1 << 40},)"),
        "metadata declares a huge array": (
            {**arrays, name: Array(dtype="float32", shape=(1 << 40,), stype="numpy.ndarray",
                                   data=_npy(ref))},
            f"parameter {name!r} has shape ({1 << 40},), expected {ref.shape}"),
        "not npy": ({**arrays, name: Array(dtype="float32", shape=ref.shape,
                                           stype="numpy.ndarray", data=b"\x00" * 64)},
                    f"parameter {name!r} has no readable .npy header"),
        "other serialisation": ({**arrays, name: Array(dtype="float32", shape=ref.shape,
                                                       stype="pickle", data=_npy(ref))},
                                f"parameter {name!r} is serialised as 'pickle'"),
        "NaN": ({**arrays, name: Array(np.full(ref.shape, np.nan, ref.dtype))},
                f"parameter {name!r} contains NaN or Inf"),
    }


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "extra", "unknown part",
                                  "missing", "no encoder", "oversized data", "trailing bytes",
                                  "header declares a huge array",
                                  "metadata declares a huge array", "not npy",
                                  "other serialisation", "NaN"])
def test_a_global_model_that_does_not_fit_is_refused_and_the_model_untouched(case: str) -> None:
    model = _model()
    before = _snapshot(model)
    arrays, message = _cases(model)[case]
    record = ArrayRecord(arrays)
    tracemalloc.start()
    try:
        with pytest.raises(GlobalModelError) as err:
            decode_global_model(record, model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith("the server's global model does not fit this client's "
                                     "model: ")
    assert message in str(err.value)
    assert _same(_snapshot(model), before)
    assert peak < 8 << 20  # nothing of a declared size was allocated


def test_the_client_app_refuses_the_round_and_keeps_its_state(tmp_path: Path,
                                                              flower_identity) -> None:
    """Through ``train``: a refusal reply naming the parameter, no ledger entry, and the
    node-local model (FedEMA keeps one between rounds) exactly as it was."""
    cfg = {**DEFAULTS, "num-samples": 400, "dp": True, "target-epsilon": 4.0,
           "partitioner": "iid", "run-dir": str(tmp_path), "algorithm": "fedema"}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config["num-rounds"] = 2
    config["server-round"] = 2
    config["input-shape"] = list(SHAPE)
    model = _model()
    name = _first_weight(model)
    bad = _global(model)
    bad[name] = np.zeros((bad[name].shape[0] + 1, *bad[name].shape[1:]), np.float32)
    local = ArrayRecord(_model().state_dict())
    kept = {k: v.numpy().copy() for k, v in local.to_torch_state_dict().items()}
    ctx = Context(run_id=1, node_id=1, state=RecordDict({LOCAL_MODEL_KEY: local}),
                  run_config={}, node_config={"partition-id": 1, "num-partitions": 4})
    msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in bad.items()}),
                              "config": config}), dst_node_id=1, message_type="train")
    reply = train(msg, ctx)
    status = reply.content["status"]
    assert status["status"] == "refused"
    assert f"parameter {name!r} has shape" in status["reason"]
    assert "arrays" not in reply.content
    assert not (tmp_path / "ledger").exists()
    after = ctx.state.array_records[LOCAL_MODEL_KEY].to_torch_state_dict()
    assert kept.keys() == after.keys()
    assert all(np.array_equal(kept[k], after[k].numpy()) for k in kept)
