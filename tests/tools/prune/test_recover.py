"""Recovery after unstructured pruning: distillation with the zeros held, then int8 with the zeros kept."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tests.tools.prune.test_structured import tiny_ssd, tiny_ssd_file  # noqa: E402


def _half_zero(graph, seed=0):
    """A copy of ``graph`` with half of every pointwise kernel's weights zeroed (at random)."""
    rng = np.random.default_rng(seed)
    pruned = graph.copy()
    for la in pruned.layers:
        if la.kind == "conv" and la.kernel.shape[:2] == (1, 1):
            la.kernel = la.kernel * (rng.random(la.kernel.shape) < 0.5)
    return pruned


def test_masked_distillation_keeps_zeros_and_moves_towards_dense():
    import cv2

    from edgedet.tools.prune.recover import zero_masks
    from edgedet.tools.prune.structured import DistillOptions, augmented_views, distill, held_proxy

    dense = tiny_ssd()
    pruned = _half_zero(dense)
    masks = zero_masks(pruned)
    assert set(masks) == {"pw1", "pw2", "pw3", "box0", "cls0", "box1", "cls1"}
    rng = np.random.default_rng(3)
    images = [cv2.resize(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), (20, 24)) for _ in range(8)]
    held = (augmented_views(images, (16, 16), 1).astype(np.float32) - 128) / 128
    trained, _ = distill(dense, pruned, images, DistillOptions(steps=60, batch=4, learning_rate=1e-3), masks=masks)
    for name, mask in masks.items():
        kernel = trained.layer(name).kernel
        assert np.all(kernel[mask == 0] == 0), name
        assert not np.array_equal(kernel, pruned.layer(name).kernel), name  # the rest was trained
    before, after = held_proxy(dense, pruned, held), held_proxy(dense, trained, held)
    assert after["logit_rel_error"] < before["logit_rel_error"]


def test_recover_writes_back_in_the_source_format_with_the_zeros_kept(tmp_path):
    from edgedet.detector import Detector
    from edgedet.errors import ModelError
    from edgedet.tflite import read_model
    from edgedet.tools.prune import PruneOptions, RecoverOptions, prune, recover
    from edgedet.tools.prune import layers as pl
    from edgedet.tools.prune.structured import export_float, read_graph

    src, calib = tiny_ssd_file(tmp_path)
    pruned_path = tmp_path / "pruned.tflite"
    prune(src, pruned_path, PruneOptions(method="magnitude", allocation="uniform", skip=()), measure=False)
    out = tmp_path / "recovered.tflite"
    report = recover(src, pruned_path, out, [calib], RecoverOptions(steps=4, batch=2, pool=10))
    assert report.steps == 4 and set(report.proxies) == {"pruned", "recovered"} and report.layers == 11
    with pytest.raises(ModelError):  # another file's layers
        export_float(_half_zero(read_graph(src)), tmp_path / "other.tflite")
        recover(src, tmp_path / "other.tflite", out, [calib], RecoverOptions(steps=1, batch=2, pool=10))
    assert report.zeros["pruned"] > 0 and report.zeros["recovered"] == report.zeros["pruned"]
    assert any(line.startswith("minutes: load") and "recovery" in line for line in report.format_lines())
    before, after = read_model(pruned_path), read_model(out)
    changed = 0
    for a, b in zip(pl.find_layers(before), pl.find_layers(after)):
        wa, wb = pl.stored_weights(before, a), pl.stored_weights(after, b)
        assert wa.dtype == wb.dtype and np.all(wb[wa == 0] == 0), a.name  # same format, zeros kept
        changed += not np.array_equal(wa, wb)
    assert changed == 11  # every layer was retrained
    det = Detector.from_path(out, threads=1, labels=["a", "b"])
    assert det.labels == ["a", "b"]
