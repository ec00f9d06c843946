"""Label-free recovery: the pruned network learns the dense one's outputs on augmented unlabelled
images (random crops and flips of the calibration pool).

Loss per image: binary cross-entropy between the student's class scores and the teacher's
(sigmoid of the logits, every anchor and class), plus the squared error of the box encodings
weighted by the teacher's best foreground score at each anchor (boxes matter where something is);
optionally (``feature_weight``) the squared error of each pruned layer's kept channels against the
same channels of the dense layer, divided by their mean square. With ``masks`` (layer -> 0/1 array of
its kernel's shape) the masked weights are held at zero (a sparse network stays sparse).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .data import random_view
from .graph import FloatGraph
from .net import build_keras, import_tf, kernel_variable, pixels_to_input, store_weights


@dataclass(frozen=True)
class DistillOptions:
    steps: int = 300
    batch: int = 8
    learning_rate: float = 1e-4
    box_weight: float = 1.0
    feature_weight: float = 0.0  # > 0: also match the kept channels of the pruned layers (normalised MSE)
    max_seconds: float = 900.0  # stop early when the budget is spent
    seed: int = 0


@dataclass
class DistillReport:
    steps: int = 0
    seconds: float = 0.0
    losses: list = field(default_factory=list)  # (step, mean loss over the last steps)


def distill_loss(tf, teacher_out, student_out, box_weight: float):
    """The recovery loss of a batch (see the module docstring)."""
    tb, tl = teacher_out
    sb, sl = student_out
    target = tf.sigmoid(tl)
    bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=sl))
    bce -= tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=tl))  # 0 at a perfect match
    w = tf.reduce_max(target[..., 1:], axis=-1)
    box = tf.reduce_sum(w * tf.reduce_sum(tf.square(sb - tb), axis=-1)) / (tf.reduce_sum(w) + 1e-6)
    return bce + box_weight * box


def feature_loss(tf, teacher_feats, student_feats, kept: list):
    """Mean over layers of ``||s - t[..., kept]||^2 / mean(t[..., kept]^2)``."""
    terms = []
    for t, s, k in zip(teacher_feats, student_feats, kept):
        tk = tf.gather(t, k, axis=-1)
        terms.append(tf.reduce_mean(tf.square(s - tk)) / (tf.reduce_mean(tf.square(tk)) + 1e-6))
    return tf.add_n(terms) / len(terms)


def distill(dense: FloatGraph, pruned: FloatGraph, images: Sequence, options: DistillOptions = DistillOptions(),
            log=None, keep: dict | None = None, masks: dict | None = None,
            checkpoint=None) -> tuple[FloatGraph, DistillReport]:
    """Train ``pruned`` towards ``dense`` on random views of ``images`` (RGB arrays); the trained graph.
    ``keep`` (pruned layer -> kept dense channel indices) is needed for the feature term; ``masks``
    (layer -> 0/1 kernel mask) keeps the masked weights at zero; ``checkpoint(step, graph)``, when given,
    is called every 100 steps with the graph trained so far."""
    tf, keras = import_tf()
    names = tuple(keep) if keep and options.feature_weight > 0 else ()
    kept = [tf.constant(np.asarray(keep[n], np.int32)) for n in names]
    teacher, student = build_keras(dense, features=names), build_keras(pruned, features=names)
    teacher.trainable = False
    opt = keras.optimizers.Adam(options.learning_rate)
    held = [(kernel_variable(student, n), tf.constant(np.asarray(m, np.float32))) for n, m in (masks or {}).items()]

    @tf.function
    def step(x):
        t_out = teacher(x, training=False)
        with tf.GradientTape() as tape:
            s_out = student(x, training=True)
            loss = distill_loss(tf, t_out[:2], s_out[:2], options.box_weight)
            if names:
                loss += options.feature_weight * feature_loss(tf, t_out[2:], s_out[2:], kept)
        grads = tape.gradient(loss, student.trainable_variables)
        opt.apply_gradients(zip(grads, student.trainable_variables))
        for var, mask in held:
            var.assign(var * mask)
        return loss

    rng = np.random.default_rng(options.seed)
    report, t0, recent = DistillReport(), time.perf_counter(), []
    for i in range(options.steps):
        picks = rng.integers(0, len(images), options.batch)
        batch = np.stack([random_view(images[j], dense.input_size, rng) for j in picks])
        recent.append(float(step(tf.constant(pixels_to_input(dense, batch)))))
        report.steps = i + 1
        if (i + 1) % 10 == 0:
            report.losses.append((i + 1, float(np.mean(recent))))
            recent = []
            if log is not None:
                log(f"step {i + 1}: loss {report.losses[-1][1]:.5f} ({time.perf_counter() - t0:.0f} s)")
        if checkpoint is not None and (i + 1) % 100 == 0:
            checkpoint(i + 1, store_weights(student, pruned))
        if time.perf_counter() - t0 > options.max_seconds:
            break
    report.seconds = time.perf_counter() - t0
    return store_weights(student, pruned), report
