"""The evaluate stage's scoring of paired data: pairs, not just marginals."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from realuid.data import write_split
from realuid.metrics import sliced_wasserstein2
from realuid.scoring import joint_metrics as _joint_metrics
from realuid.stages import evaluate as evaluate_stage

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs/toy.yaml"  # the 2-D configuration; params.yaml is the digits default


def test_joint_score_catches_a_student_that_ignores_its_input():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(3000, 2))
    reference = SimpleNamespace(x0=x0, x1=x0 + 0.05 * rng.standard_normal(x0.shape))
    sources = rng.uniform(-1, 1, size=(3000, 2))
    faithful = sources + 0.05 * rng.standard_normal(sources.shape)
    ignoring = faithful[rng.permutation(len(faithful))]  # the same marginal, paired with the wrong inputs
    gen = {"faithful": faithful, "ignoring": ignoring}
    metrics = {who: {} for who in gen}
    _joint_metrics(metrics, gen, {who: sources for who in gen}, reference, seed=0)
    # Both have the right marginal of x1 ...
    assert sliced_wasserstein2(ignoring, reference.x1) == sliced_wasserstein2(faithful, reference.x1)
    # ... only the pairs tell them apart.
    assert metrics["faithful"]["joint_sliced_wasserstein2"] < 0.03
    assert metrics["ignoring"]["joint_sliced_wasserstein2"] > 5 * metrics["faithful"]["joint_sliced_wasserstein2"]


@pytest.mark.parametrize("store_inputs", [True, False])
def test_paired_samples_are_scored_with_the_inputs_they_carry(tmp_path, capsys, store_inputs):
    rng = np.random.default_rng(1)
    splits = {}
    for name, n in (("train", 800), ("test", 400)):
        x0 = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        splits[name] = (x0, (x0 + 0.05 * rng.standard_normal(x0.shape)).astype(np.float32))
        write_split(tmp_path / f"{name}.h5", splits[name][1], x0=splits[name][0], attrs={"source": name})
    samples = tmp_path / "samples"
    x0, x1 = splits["test"]
    # The student keeps the pairing; its copy "student_raw" has the right marginal but shuffled pairs.
    for who, out in (("teacher", x1), ("student", x1), ("student_raw", x1[rng.permutation(len(x1))])):
        write_split(samples / f"{who}.h5", out, x0=x0 if store_inputs else None, attrs={"source": who})
    timing = {"nfe": 1, "samples_per_second": 1.0}
    (samples / "timing.json").write_text(json.dumps({"teacher": timing, "student": timing}))
    params = yaml.safe_load(TOY.read_text())  # points: the 2-D configuration
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "params.yaml"), "--samples", str(samples), "--train", str(tmp_path / "train.h5"),
            "--test", str(tmp_path / "test.h5"), "--features", str(tmp_path), "--out", str(tmp_path / "m.json")]
    code = evaluate_stage.cli(argv)
    if not store_inputs:  # nothing to pair them with: a clear error, no metrics file
        assert code == 1 and "carry no inputs x0: rerun sample" in capsys.readouterr().err
        assert not (tmp_path / "m.json").exists()
        return
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    joint = {who: row["joint_sliced_wasserstein2"] for who, row in metrics.items() if who != "protocol"}
    # How the numbers were measured travels with them.
    assert metrics["protocol"] == {"reference_split": "test", "reference_size": 400, "n_generated": 400,
                                   "sample_seed": None, "evaluate_seed": 0, "real_floor_split": "train",
                                   "real_floor_size": 400, "extractor": "none (raw coordinates)"}
    assert joint["student"] < 0.03 and joint["student_raw"] > 5 * joint["student"]
    assert metrics["student"]["sliced_wasserstein2"] == metrics["student_raw"]["sliced_wasserstein2"]


@pytest.mark.parametrize("dataset", ["gmm8", "checkerboard"])
def test_points_get_knn_precision_recall_and_on_gmm8_the_mass_per_mode(tmp_path, dataset):
    from realuid.data import GMM8_STD, gmm8_centers, make_toy, rng_for

    for name, n, stream in (("train", 1500, 1), ("test", 1000, 2)):
        write_split(tmp_path / f"{name}.h5", make_toy("gmm8", n, rng_for(0, stream)), attrs={"source": "toy", "dataset": dataset})
    samples = tmp_path / "samples"
    rng = np.random.default_rng(3)
    dropped = gmm8_centers()[rng.integers(0, 7, 1000)] + GMM8_STD * rng.standard_normal((1000, 2))
    write_split(samples / "teacher.h5", make_toy("gmm8", 1000, rng_for(0, 3)), attrs={"source": "teacher"})
    write_split(samples / "student.h5", dropped.astype(np.float32), attrs={"source": "student"})  # mode 7 is missing
    timing = {"nfe": 1, "samples_per_second": 1.0}
    (samples / "timing.json").write_text(json.dumps({"teacher": timing, "student": timing}))
    (tmp_path / "params.yaml").write_text(TOY.read_text())
    argv = ["--params", str(tmp_path / "params.yaml"), "--samples", str(samples), "--train", str(tmp_path / "train.h5"),
            "--test", str(tmp_path / "test.h5"), "--features", str(tmp_path), "--out", str(tmp_path / "m.json")]
    assert evaluate_stage.cli(argv) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    for who in ("teacher", "student", "real"):
        assert 0 <= metrics[who]["knn_precision"] <= 1 and 0 <= metrics[who]["knn_recall"] <= 1
    assert metrics["student"]["knn_recall"] < metrics["teacher"]["knn_recall"] - 0.05
    if dataset == "gmm8":
        assert metrics["student"]["min_mode_ratio"] == 0.0 and metrics["teacher"]["min_mode_ratio"] > 0.7
        assert metrics["student"]["mode_mass_tv"] > 0.1 > metrics["teacher"]["mode_mass_tv"]
    else:  # the modes of other data sets are not known
        assert "mode_mass_tv" not in metrics["student"]


def test_the_headline_student_is_scored_once_with_its_copys_numbers(tmp_path, monkeypatch):
    # sample writes `student` as the very samples of the copy it headlines: extracting and scoring them
    # again would cost a whole row (150k Inception passes and K + 1 FIDs at paper scale) for equal numbers.
    import torch

    from realuid import metrics as metrics_module
    from realuid.features import FeatureNet, save_feature_net

    rng = np.random.default_rng(4)
    images = lambda n: rng.uniform(-1, 1, size=(n, 1, 8, 8)).astype(np.float32)  # noqa: E731
    for name in ("train", "test"):
        write_split(tmp_path / f"{name}.h5", images(40), attrs={"source": name})
    samples = tmp_path / "samples"
    headline, other, two_steps = images(20), images(20), images(20)
    for who, x in (("teacher", images(20)), ("student", headline), ("student_ema_0_999", headline),
                   ("student_raw", other), ("student_nfe2", two_steps), ("student_ema_0_999_nfe2", two_steps)):
        write_split(samples / f"{who}.h5", x, attrs={"source": who})
    timing = {"nfe": 1, "samples_per_second": 1.0}
    (samples / "timing.json").write_text(json.dumps({"teacher": timing, "student": timing,
                                                     **dict.fromkeys(["student_nfe2", "student_ema_0_999_nfe2"],
                                                                     {"nfe": 2, "samples_per_second": 0.5}),
                                                     "student_copy": "student_ema_0_999"}))
    torch.manual_seed(0)
    save_feature_net(tmp_path / "extractor.pt", FeatureNet(1, 8, 4, width=4, task="rotation"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"].update(kid_subset_size=10, batch_size=20, fid_blocks=2, device="cpu")
    params["sample"]["n_samples"] = 20
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    extracted = []
    real_everywhere = metrics_module.FeatureExtractor.everywhere
    monkeypatch.setattr(metrics_module.FeatureExtractor, "everywhere",
                        lambda self, images, **kw: extracted.append(len(images)) or real_everywhere(self, images, **kw))
    argv = ["--params", str(tmp_path / "params.yaml"), "--samples", str(samples), "--train", str(tmp_path / "train.h5"),
            "--test", str(tmp_path / "test.h5"), "--features", str(tmp_path), "--out", str(tmp_path / "m.json")]
    assert evaluate_stage.cli(argv) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    # reference + teacher + student_ema_0_999 (+ _nfe2) + student_raw + real: none for `student` (`student_nfe2`)
    assert len(extracted) == 6
    shared = {k: v for k, v in metrics["student"].items() if k not in timing}
    assert shared == metrics["student_ema_0_999"] and "fid_mean" in shared
    assert metrics["student_raw"]["fid"] != shared["fid"]
    assert metrics["student_nfe2"] == metrics["student_ema_0_999_nfe2"] and metrics["student_nfe2"]["nfe"] == 2
    # Samples that merely share a name are scored on their own.
    write_split(samples / "student.h5", other, attrs={"source": "student"})
    extracted.clear()
    assert evaluate_stage.cli(argv) == 0
    assert len(extracted) == 7
    assert json.loads((tmp_path / "m.json").read_text())["student"]["fid"] == metrics["student_raw"]["fid"]


def test_published_reference_statistics_replace_the_splits_for_fid(tmp_path, capsys):
    # Statistics computed here from the reference split's features, written as EDM / clean-fid publish them:
    # FID must come out as on the feature path, the protocol must name the file by digest, and KID and
    # precision/recall (which need features) stay against the split.
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from realuid.checkpoints import file_digest
    from realuid.data import read_split
    from realuid.metrics import image_features
    from helpers.digits import evaluate_inputs

    params, argv = evaluate_inputs(tmp_path)
    features = tmp_path / "features_cached"
    reference = torch.as_tensor(read_split(tmp_path / "test.h5").x1)
    stats = fid_features_to_statistics(image_features(reference, extractor_weights_path=features / "extractor.pt",
                                                      batch_size=32, device="cpu")["features"])
    np.savez(tmp_path / "ref.npz", mu=stats["mu"].astype(np.float64), sigma=stats["sigma"])
    outputs = {}
    for name, path in (("own", ""), ("published", str(tmp_path / "ref.npz"))):
        params["evaluate"]["reference_stats"] = path
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
        assert evaluate_stage.cli(["--params", str(tmp_path / f"{name}.yaml"), *argv, "--features", str(features),
                                   "--out", str(tmp_path / f"{name}.json")]) == 0
        outputs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    own, published = outputs["own"], outputs["published"]
    for who in ("teacher", "student", "student_raw", "real"):
        assert published[who] == pytest.approx(own[who], rel=1e-6, abs=1e-9), who
    assert "reference_stats" not in own["protocol"]
    assert published["protocol"]["reference_stats_sha256"] == file_digest(tmp_path / "ref.npz")
    assert published["protocol"]["fid_reference"] == "reference_stats"
    assert published["protocol"]["kid_precision_recall_reference"] == "test"

    # A file without sigma: one error line, before any work, nothing written.
    np.savez(tmp_path / "bad.npz", mu=stats["mu"])
    params["evaluate"]["reference_stats"] = str(tmp_path / "bad.npz")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    assert evaluate_stage.cli(["--params", str(tmp_path / "bad.yaml"), *argv, "--features", str(features),
                               "--out", str(tmp_path / "bad" / "m.json")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("error:") == 1
    assert "evaluate.reference_stats" in captured.err and "'mu' and 'sigma'" in captured.err
    assert not (tmp_path / "bad").exists()
