"""Issue 16, item 6 ("data traps"): what a site or researcher hands in is read as it is.

Each test here failed on the behaviour before the fix: unlabelled npz refused, multi-label
labels refused, ``--data-path x.npz`` silently trained on MNIST-1D, image folders turned grey,
a corrupt npz suggested enabling pickle, a site silently held out 20 % of its records, and
none of these choices was printed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedssl.cli import main
from fedssl.simulations.config import ConfigError, ExperimentConfig
from fedssl.simulations.simulate import preflight
from fedssl.ssl_core.augmentations import ImageAugment
from fedssl.ssl_core.data_cache import DataSpec, cached_dataset, partition_labels
from fedssl.ssl_core.datasets import (
    DataError,
    infer_dataset,
    load_dataset,
    load_image_folder,
    load_npz,
    require_labels,
)
from fedssl.ssl_core.encoders import build_encoder
from fedssl.ssl_core.evaluation import evaluate_encoder
from fedssl.ssl_core.objectives import get_objective

RNG = np.random.default_rng(0)


def _images(n: int, *shape: int) -> np.ndarray:
    return RNG.integers(0, 255, (n, *shape), dtype=np.uint8)


def _cfg(**kw: object) -> ExperimentConfig:
    """A small simulation config (validated: the dataset is resolved)."""
    base = {"num_clients": 2, "rounds": 1, "dp": False, "secagg": False}
    return ExperimentConfig.from_dict({**base, **kw})


# --- unlabelled data --------------------------------------------------------------------

def test_unlabelled_npz_trains_and_evaluation_requires_labels(tmp_path: Path) -> None:
    only = tmp_path / "site.npz"
    np.savez(only, train_images=_images(20, 8, 8))
    site = load_npz(only, with_test=False)
    assert site.label_kind == "none" and site.y_train is None and site.num_classes == 0
    assert len(site.x_train) == 20 and site.x_test is None
    plain = tmp_path / "plain.npz"  # the documented single-array layout
    np.savez(plain, images=_images(12, 8, 8, 3))
    assert load_npz(plain, with_test=False).input_shape == (3, 8, 8)
    # where labels are needed (fine-tuning, fedssl evaluate), the error says so (and where)
    with pytest.raises(DataError, match=r"the server's evaluation data .*site\.npz.* has no "
                                        "labels, but labels are required there"):
        require_labels(load_npz(only), "the server's evaluation data")
    # a simulation on unlabelled data is a training-only run, and says so (before: refused)
    said: list[str] = []
    preflight(_cfg(data_path=str(only), partitioner="iid"), say=said.append)
    assert any("evaluation: no labels: the run trains and exports the encoder" in line
               and "fedssl evaluate" in line for line in said), said
    # label skew needs labels: refused, naming the fix
    with pytest.raises(DataError, match="has no labels: use --partitioner iid"):
        preflight(_cfg(data_path=str(only), partitioner="dirichlet"), say=lambda _: None)


def test_labelled_evaluation_data_the_probes_cannot_use_is_refused(tmp_path: Path) -> None:
    """Evaluation data is either labelled throughout (probes) or not at all (training
    only): labels on the training split but none on the test split are refused (by the
    loader), labelled data without a test split by the evaluation's check."""
    from fedssl.ssl_core.datasets import evaluation_labels

    half = tmp_path / "half.npz"
    np.savez(half, train_images=_images(20, 8, 8), train_labels=np.arange(20) % 2,
             test_images=_images(6, 8, 8))
    with pytest.raises(DataError, match="train and test labels differ in kind"):
        load_npz(half)
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, train_images=_images(20, 8, 8), train_labels=np.arange(20) % 2)
    with pytest.raises(DataError, match="has no test split"):
        evaluation_labels(load_npz(labelled, with_test=False), "the server's evaluation data")
    assert evaluation_labels(load_npz(labelled), "x") is True
    only = tmp_path / "only.npz"
    np.savez(only, train_images=_images(20, 8, 8))
    assert evaluation_labels(load_npz(only), "x") is False


def test_training_only_evaluation_reports_collapse_metrics_only(tmp_path: Path) -> None:
    """The server's evaluation on unlabelled data: collapse metrics (label-free) at round 0
    and during the run, nothing at the end; probes never run."""
    from fedssl.server.evaluation import ServerEvaluation

    only = tmp_path / "only.npz"
    np.savez(only, train_images=_images(40, 8, 8))
    data = load_npz(only)
    evaluation = ServerEvaluation(data, 100, 0, (5,), "cpu")
    encoder = build_encoder(data.input_shape)
    assert not evaluation.labelled
    for row in (evaluation.initial(encoder), evaluation.during_run(encoder)):
        assert set(row) == {"feature_std", "feature_std_ratio", "effective_rank"}
    assert evaluation.final(encoder) == {}
    # no labels: no label-efficiency table, even when asked for (issue 21 item 1)
    asked = ServerEvaluation(data, 100, 0, (5,), "cpu", finetune=(5,))
    assert asked.label_efficiency({"federated encoder": encoder}, lambda: encoder) is None


def test_fedssl_server_takes_unlabelled_evaluation_data_as_training_only(tmp_path: Path,
                                                                         capsys) -> None:
    from fedssl.cli import build_parser
    from fedssl.deploy_commands import server_run_config

    only = tmp_path / "eval.npz"
    np.savez(only, train_images=_images(20, 8, 8))
    args = build_parser().parse_args(["server", "--certs", str(tmp_path / "certs"),
                                      "--data-path", str(only)])
    cfg = server_run_config(args)
    assert cfg["dataset"] == "npz"
    assert "no labels: the run trains and exports the encoder" in capsys.readouterr().out


def test_unlabelled_image_folder(tmp_path: Path) -> None:
    for i in range(4):
        Image.fromarray(_images(1, 10, 10)[0]).save(tmp_path / f"{i}.png")
    d = load_image_folder(tmp_path, image_size=8, with_test=False)
    assert d.label_kind == "none" and len(d.x_train) == 4
    assert any("unlabelled" in n for n in d.notes)


# --- multi-label ----------------------------------------------------------------------

def test_multilabel_npz_is_accepted_and_single_column_squeezed(tmp_path: Path) -> None:
    path = tmp_path / "chest.npz"
    y = RNG.integers(0, 2, (30, 14))
    np.savez(path, train_images=_images(30, 8, 8), train_labels=y,
             test_images=_images(10, 8, 8), test_labels=RNG.integers(0, 2, (10, 14)))
    d = load_npz(path)
    assert d.label_kind == "multi-label" and d.num_classes == 14
    assert d.y_train.shape == (30, 14) and np.array_equal(d.y_train, y)
    assert "multi-label (14 labels)" in d.describe()
    squeezed = tmp_path / "one.npz"
    np.savez(squeezed, train_images=_images(10, 8, 8), train_labels=np.arange(10)[:, None] % 3)
    one = load_npz(squeezed)
    assert one.label_kind == "multi-class" and one.y_train.ndim == 1 and one.num_classes == 3
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=_images(10, 8, 8), train_labels=np.full((10, 3), 2))
    with pytest.raises(DataError, match="must be 0/1 flags"):
        load_npz(bad)


def _multilabel_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 5))
    return (y * 4.0 + rng.normal(size=(n, 5))).astype(np.float32), y


def test_multilabel_evaluation_uses_per_label_probes() -> None:
    f_tr, y_tr = _multilabel_blobs(300, 0)
    f_te, y_te = _multilabel_blobs(200, 1)
    out = evaluate_encoder(torch.nn.Identity(), f_tr, y_tr, f_te, y_te, labels_per_class=(1, 5))
    assert out["linear_probe_accuracy"] > 0.9 and out["linear_probe_auc"] > 0.95
    assert out["knn_accuracy"] > 0.9 and out["knn_auc"] > 0.95
    assert not any("shot" in k for k in out)  # few-label probes skipped (printed reason)
    noise = np.random.default_rng(2).normal(size=f_te.shape).astype(np.float32)
    chance = evaluate_encoder(torch.nn.Identity(), f_tr, y_tr, noise, y_te)
    assert 0.35 < chance["linear_probe_auc"] < 0.65 and 0.35 < chance["knn_auc"] < 0.65


def test_multilabel_simulation_preflight_prints_the_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "chest.npz"
    np.savez(path, train_images=_images(40, 8, 8), train_labels=RNG.integers(0, 2, (40, 14)))
    lines: list[str] = []
    preflight(_cfg(data_path=str(path), partitioner="iid"), say=lines.append)
    text = "\n".join(lines)
    assert "14 binary probes, one per label" in text and "few-label probes skipped" in text
    with pytest.raises(DataError, match=r"multi-label .*use --partitioner iid"):
        preflight(_cfg(data_path=str(path)), say=lines.append)  # default: dirichlet
    assert len(partition_labels(load_npz(path), "iid")) == 32


# --- dataset inference -----------------------------------------------------------------

def test_dataset_is_inferred_from_the_data_path(tmp_path: Path) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, train_images=_images(10, 8, 8), train_labels=np.arange(10) % 2)
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    assert _cfg(data_path=str(npz)).dataset == "npz"
    assert _cfg(data_path=str(folder)).dataset == "imagefolder"
    assert _cfg().dataset == "mnist1d"  # no path: the generated default
    assert _cfg(dataset="npz", data_path=str(npz)).dataset == "npz"
    with pytest.raises(ConfigError, match=r"--dataset mnist1d .*--data-path .*x\.npz"):
        _cfg(dataset="mnist1d", data_path=str(npz))
    with pytest.raises(ConfigError, match=r"--dataset imagefolder cannot read --data-path"):
        _cfg(dataset="imagefolder", data_path=str(npz))
    with pytest.raises(ConfigError, match=r"--dataset npz cannot read --data-path .*imgs"):
        _cfg(dataset="npz", data_path=str(folder))
    with pytest.raises(DataError, match="data path not found"):
        infer_dataset(tmp_path / "missing")
    # the loaders agree (what `fedssl server` and the sites use)
    assert load_dataset("auto", str(npz)).name == "x"


def test_simulate_cli_refuses_a_contradicting_dataset(tmp_path: Path, capsys) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, train_images=_images(10, 8, 8), train_labels=np.arange(10) % 2)
    code = main(["simulate", "--dataset", "mnist1d", "--data-path", str(npz),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--dataset mnist1d" in err and str(npz) in err
    assert not (tmp_path / "run").exists()


def test_simulate_preflight_prints_every_choice(tmp_path: Path) -> None:
    npz = tmp_path / "rgb.npz"
    np.savez(npz, train_images=_images(30, 8, 8, 3), train_labels=np.arange(30) % 3)
    lines: list[str] = []
    data = preflight(_cfg(data_path=str(npz)), say=lines.append)
    text = "\n".join(lines)
    assert f"dataset npz (inferred from --data-path {npz})" in text
    assert "(3 channels, RGB)" in text and "labels: 3 classes" in text
    assert "holding out 20% of the training records (6 of 30) for evaluation" in text
    assert len(data.x_train) == 24 and len(data.x_test) == 6


# --- colour ----------------------------------------------------------------------------

def _colour_folder(root: Path, n_rgb: int, n_grey: int) -> None:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    for i in range(n_rgb):
        arr = np.zeros((12, 12, 3), np.uint8)
        arr[..., 0] = 200 + i  # red
        Image.fromarray(arr, "RGB").save(root / "ab"[i % 2] / f"rgb{i}.png")
    for i in range(n_grey):
        Image.fromarray(np.full((12, 12), 100, np.uint8), "L").save(
            root / "ab"[i % 2] / f"grey{i}.png")


def test_image_folder_keeps_colour(tmp_path: Path) -> None:
    _colour_folder(tmp_path / "rgb", 6, 0)
    d = load_image_folder(tmp_path / "rgb", image_size=8)
    assert d.input_shape == (3, 8, 8) and "RGB" in d.describe()
    x = np.concatenate([d.x_train, d.x_test])
    assert (x[:, 0] > x[:, 1] + 1).all()  # red stays red (standardised: still the largest)
    _colour_folder(tmp_path / "grey", 0, 4)
    assert load_image_folder(tmp_path / "grey", image_size=8).input_shape == (1, 8, 8)


def test_mixed_image_folder_follows_the_majority_with_a_note(tmp_path: Path) -> None:
    _colour_folder(tmp_path / "m1", 3, 1)
    d = load_image_folder(tmp_path / "m1", image_size=8)
    assert d.channels == 3
    assert any("mixes 1 greyscale and 3 colour images: all read as RGB" in n for n in d.notes)
    _colour_folder(tmp_path / "m2", 1, 3)
    d = load_image_folder(tmp_path / "m2", image_size=8)
    assert d.channels == 1 and any("all read as greyscale" in n for n in d.notes)


def test_colour_npz_and_three_channel_training_parts(tmp_path: Path) -> None:
    path = tmp_path / "rgb.npz"
    np.savez(path, train_images=_images(16, 12, 12, 3))
    d = load_npz(path, with_test=False)
    assert d.input_shape == (3, 12, 12)
    x = torch.as_tensor(d.x_train)
    views = ImageAugment()(x, torch.Generator().manual_seed(0))
    assert views.shape == x.shape
    assert build_encoder(d.input_shape)(views).shape[0] == 16
    model = get_objective("simsiam").build_model(d.input_shape)
    assert torch.isfinite(model.encoder(views)).all()
    rgba = tmp_path / "rgba.npz"  # was silently read as 28 channels of width 4
    np.savez(rgba, train_images=_images(4, 28, 28, 4))
    with pytest.raises(DataError, match=r"C = 1 \(grey\) or 3 \(RGB\), got \(4, 28, 28, 4\)"):
        load_npz(rgba)


# --- corrupt files ---------------------------------------------------------------------

def test_corrupt_npz_messages_never_suggest_pickle(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    text.write_bytes(b"this is not an archive at all")
    with pytest.raises(DataError, match=r"text\.npz is not a valid \.npz file") as exc:
        load_npz(text)
    assert "pickle" not in str(exc.value)
    objects = tmp_path / "objects.npz"
    np.savez(objects, train_images=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="array 'train_images' holds Python objects, which "
                                        "fedssl does not load") as exc:
        load_npz(objects)
    assert "allow_pickle" not in str(exc.value)
    good = tmp_path / "good.npz"
    np.savez(good, train_images=_images(50, 16, 16))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"is not a valid \.npz file") as exc:
        load_npz(truncated)
    assert "pickle" not in str(exc.value)


# --- held-out split --------------------------------------------------------------------

def test_site_holds_nothing_out_and_evaluation_data_says_it_does(tmp_path: Path) -> None:
    path = tmp_path / "site.npz"
    np.savez(path, train_images=_images(20, 8, 8), train_labels=np.arange(20) % 2,
             test_images=_images(5, 8, 8), test_labels=np.arange(5) % 2)
    site = cached_dataset(DataSpec("npz", str(path), with_test=False))
    assert len(site.x_train) == 20 and site.x_test is None  # every record trains
    assert any("test_images of site.npz not used" in n for n in site.notes)
    no_test = tmp_path / "no_test.npz"
    np.savez(no_test, train_images=_images(20, 8, 8), train_labels=np.arange(20) % 2)
    assert len(load_npz(no_test, with_test=False).x_train) == 20
    server = load_npz(no_test)  # evaluation data: the held-out share is printed
    assert len(server.x_train) == 16 and len(server.x_test) == 4
    assert server.notes == ("no test split in no_test.npz: holding out 20% of the training "
                            "records (4 of 20) for evaluation; they are not trained on",)


def test_colour_site_in_a_grey_federation_is_refused_clearly(tmp_path: Path,
                                                              flower_identity) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from fedssl.client.app import train
    from fedssl.server.app import CLIENT_KEYS, DEFAULTS

    site = tmp_path / "rgb.npz"
    np.savez(site, train_images=_images(20, 12, 12, 3))
    cfg = {**DEFAULTS, "dp": False, "secagg": False, "run-dir": str(tmp_path)}
    config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    config.update({"num-rounds": 1, "server-round": 1, "input-shape": [1, 12, 12]})
    model = get_objective(str(cfg["method"])).build_model((1, 12, 12))
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={}, node_config={
        "state-dir": str(tmp_path / "state"), "data-path": str(site), "dataset": "npz"})
    status = train(msg, ctx).content["status"]
    assert status["status"] == "refused"
    assert "records have shape (3, 12, 12)" in status["reason"]
    assert "model takes (1, 12, 12)" in status["reason"]


def test_sixteen_bit_grey_images_keep_their_range(tmp_path: Path) -> None:
    """Pillow's convert("L") clips 16-bit values above 255: a ramp became almost all white."""
    (tmp_path / "a").mkdir()
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    for i in range(3):
        Image.fromarray(ramp).save(tmp_path / "a" / f"{i}.png")
    Image.fromarray(ramp).save(tmp_path / "loose.png")
    d = load_image_folder(tmp_path, image_size=16, with_test=False)
    assert d.channels == 1
    x = d.x_train[0, 0]
    assert x[0, 0] < x[8, 8] < x[-1, -1]  # the ramp survives (not saturated)
    assert len(np.unique(x)) > 100
    assert any("1 image(s) directly in" in n and "loose.png" in n for n in d.notes)


def test_fedssl_server_prints_its_evaluation_data_and_held_out_share(tmp_path: Path,
                                                                     capsys) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, train_images=_images(40, 8, 8), train_labels=np.arange(40) % 4)
    main(["server", "--certs", str(tmp_path / "no-certs"), "--data-path", str(path)])
    out = capsys.readouterr().out
    assert "[fedssl server] evaluation data (npz): eval from" in out
    assert "labels: 4 classes; 8 test records" in out
    assert "holding out 20% of the training records (8 of 40) for evaluation" in out


@pytest.mark.parametrize("method", ["simsiam", "byol"])
def test_dp_sgd_trains_on_three_channel_images(method: str) -> None:
    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.ssl_core.augmentations import augment_for

    x = np.random.default_rng(1).standard_normal((32, 3, 12, 12)).astype(np.float32)
    objective = get_objective(method)
    model = objective.build_model((3, 12, 12))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_local(model, objective, x, augment_for((3, 12, 12), "npz"),
                         TrainConfig(batch_size=8, dp=True, noise_multiplier=1.0))
    assert result.steps > 0 and np.isfinite(result.loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def _flag_zip_members(path: Path, local_offset: int, central_offset: int, value: bytes,
                      mask: bool) -> None:
    """Rewrite a field of every member header of the zip at ``path`` (local and central)."""
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        i = raw.find(sig)
        while i >= 0:
            if mask:
                raw[i + off] |= value[0]
            else:
                raw[i + off:i + off + len(value)] = value
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))


def test_encrypted_unsupported_and_bomb_files_are_data_errors(tmp_path: Path) -> None:
    """Archives with an encrypted member or an unknown compression method, and a PNG whose
    header claims 20000 x 20000 pixels, end in a DataError naming the file, not a traceback."""
    import struct
    import zlib

    from fedssl.ssl_core.datasets import load_image_folder, load_npz

    enc = tmp_path / "enc.npz"
    np.savez(enc, train_images=np.zeros((4, 8, 8), np.uint8))
    _flag_zip_members(enc, 6, 8, b"\x01", mask=True)  # general-purpose bit 0: encrypted
    method = tmp_path / "method.npz"
    np.savez(method, train_images=np.zeros((4, 8, 8), np.uint8))
    _flag_zip_members(method, 8, 10, struct.pack("<H", 99), mask=False)
    for path in (enc, method):
        with pytest.raises(DataError, match=str(path.name)):
            load_npz(path)

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    ihdr = png.find(b"IHDR")
    png[ihdr + 4:ihdr + 12] = struct.pack(">II", 20000, 20000)
    png[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr:ihdr + 17])))
    (root / "a" / "big.png").write_bytes(bytes(png))
    Image.new("L", (8, 8)).save(root / "a" / "ok.png")
    with pytest.raises(DataError, match=r"big\.png"):
        load_image_folder(root)


@pytest.mark.slow
def test_simulate_on_unlabelled_data_is_a_training_only_run(tmp_path: Path) -> None:
    """fedssl simulate on an npz without labels (before: refused, "labels are required
    there"): it trains, exports the encoder, reports collapse metrics per evaluation and no
    probe accuracies, and says so in the result table."""
    import json
    import os
    import subprocess
    import sys

    data = tmp_path / "unlabelled.npz"
    np.savez(data, train_images=_images(160, 12, 12))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fedssl.cli", "simulate", "--data-path", str(data),
         "--partitioner", "iid", "--num-clients", "2", "--rounds", "1", "--no-dp",
         "--no-secagg", "--finetune", "", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "evaluation: no labels: the run trains and exports the encoder" in output
    assert "no labels in the evaluation data: no probe accuracies" in output
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == "none" and report["linear_probe_accuracy"] is None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert all("feature_std_ratio" in r and "linear_probe_accuracy" not in r for r in rows)
    assert (out / "encoder.safetensors").exists()


def test_a_huge_class_id_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    """Issue 22 item 6: a label of 10^9 made the probes allocate 693 GiB."""
    npz = tmp_path / "huge.npz"
    np.savez(npz, train_images=_images(10, 8, 8), train_labels=np.array([0] * 9 + [10**9]))
    with pytest.raises(DataError, match=r"class id 1000000000 is out of range.*renumber"):
        load_npz(npz)


def test_complex_images_are_refused(tmp_path: Path) -> None:
    """Issue 22 item 8: complex64 images lost their imaginary part silently."""
    npz = tmp_path / "complex.npz"
    np.savez(npz, train_images=_images(10, 8, 8).astype(np.complex64))
    with pytest.raises(DataError, match=r"complex-valued images \(complex64\)"):
        load_npz(npz)


@pytest.mark.parametrize(("toml", "message"), [
    ("num_clients = 100000000000", "num-clients: must be between 1 and 1,000,000"),
    ("num_clients = true", "num_clients: expected int, got the boolean True"),
    ("secagg = 0", "secagg: expected true/false, got the number 0"),
    ("lr = false", "lr: expected float, got the boolean False"),
])
def test_toml_values_are_not_coerced_across_kinds(tmp_path: Path, toml: str,
                                                  message: str) -> None:
    """Issue 22 items 6 and 8: `num_clients = true` became 1 client, `secagg = 0` turned
    secure aggregation off, and 10^11 clients grew memory before any check."""
    path = tmp_path / "exp.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.load(path)


def test_simulate_refuses_a_delta_not_below_one_over_the_records(tmp_path: Path,
                                                                 capsys) -> None:
    """Issue 22 item 7: the pool bounds every client's records, so delta >= 1/pool is
    refused before anything starts (each client checks its own count too)."""
    out = tmp_path / "run"
    assert main(["simulate", "--num-samples", "300", "--num-clients", "2", "--delta", "0.5",
                 "--out", str(out)]) == 2
    assert "delta 0.5 is not below 1/records" in capsys.readouterr().err
    assert not out.exists()


def test_paths_in_a_config_file_are_relative_to_the_file(tmp_path: Path,
                                                         monkeypatch) -> None:
    """Issue 22 item 10: `--config /abs/demo.toml` from another directory failed, since its
    init_encoder was resolved against the working directory."""
    from fedssl.ssl_core.objectives import get_objective
    from fedssl.ssl_core.warm_start import export_encoder

    conf = tmp_path / "conf"
    conf.mkdir()
    export_encoder(conf / "warm.safetensors", get_objective("simsiam").build_model((1, 40)),
                   {"method": "simsiam", "input_shape": "1,40"})
    (conf / "exp.toml").write_text('init_encoder = "warm.safetensors"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = ExperimentConfig.load(conf / "exp.toml", paths_from_file=True)
    assert cfg.init_encoder == str((conf / "warm.safetensors").resolve())
    with pytest.raises(ConfigError, match="does not exist"):  # a run's config: as written
        ExperimentConfig.load(conf / "exp.toml")


def test_signals_in_an_npz_are_read_as_signals(tmp_path: Path) -> None:
    """Issue 22 item 8: a 12-channel time series ``(N, 12, 25)`` stored as train_images was
    trained as 12x25 greyscale images; ``train_signals`` says what it is, and a 3-D
    train_images array is read as images with a note saying so."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "ecg.npz"
    np.savez(npz, train_signals=rng.normal(size=(30, 12, 25)), train_labels=np.arange(30) % 3,
             test_signals=rng.normal(size=(10, 12, 25)), test_labels=np.arange(10) % 3)
    data = load_npz(npz)
    assert data.input_shape == (12, 25) and data.modality == "signal"
    assert build_encoder(data.input_shape).__class__.__name__ == "ConvEncoder1d"
    one = tmp_path / "one.npz"
    np.savez(one, train_signals=rng.normal(size=(30, 40)))
    assert load_npz(one).input_shape == (1, 40)
    images = tmp_path / "images.npz"
    np.savez(images, train_images=rng.normal(size=(30, 12, 25)).astype(np.float32))
    loaded = load_npz(images)
    assert loaded.modality == "image" and any("train_signals" in n for n in loaded.notes)
    both = tmp_path / "both.npz"
    np.savez(both, train_signals=rng.normal(size=(30, 40)),
             test_images=rng.normal(size=(5, 8, 8)))
    with pytest.raises(DataError, match="both signal and image arrays"):
        load_npz(both)
