"""How far a quantized model's raw head outputs are from its float source (label-free).

The detector's accuracy is decided by two tensors: the box encodings and the class logits that
the detection op (or our decoder) reads. ``head_snr`` runs both models on the same inputs
(held-out calibration images) and returns the signal-to-noise ratio, in dB, of the quantized
model's values against the float model's, pooled over every image:
``10 log10(sum(f^2) / sum((f - q)^2))``. Unlike detection agreement on a few frames, it uses every
value of every anchor and is not quantized by score thresholds, so small differences between
quantization recipes are measurable.

Tensors are matched by name (the quantizer keeps the float model's names for the int8 tensors);
int8 values are dequantized with their own scale and zero point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ... import tflite as tfl
from .graph import head_roots


def head_tensor_names(model) -> dict:
    """``{"boxes": name, "logits": name}`` of the float ``model``'s head: the detection op's two
    first inputs, looking through a LOGISTIC in front of the scores (logits are compared, not
    probabilities: a sigmoid hides errors on confident negatives)."""
    sg = model.subgraphs[0]
    producer = {}
    for op in sg.operators:
        for o in op.outputs:
            producer[int(o)] = op
    box, score = head_roots(model)
    logits = score
    p = producer.get(score)
    if p is not None and tfl.opcode_name(model, p.opcodeIndex) in ("LOGISTIC",):
        logits = int(p.inputs[0])
    return {"boxes": tfl.tensor_name(sg.tensors[box]), "logits": tfl.tensor_name(sg.tensors[logits]),
            "scores": tfl.tensor_name(sg.tensors[score])}


@dataclass
class _Acc:
    signal: float = 0.0
    noise: float = 0.0

    def add(self, f: np.ndarray, q: np.ndarray, weight: Optional[np.ndarray] = None) -> None:
        f = f.astype(np.float64)
        w = 1.0 if weight is None else weight
        self.signal += float(np.sum(w * f * f))
        self.noise += float(np.sum(w * (f - q) ** 2))

    @property
    def db(self) -> float:
        return float(10 * np.log10(self.signal / max(self.noise, 1e-30)))


def anchor_confidence(scores: np.ndarray) -> np.ndarray:
    """Each anchor's best class score (or logit) of ``scores`` ``[..., N, C]``, as ``[N]``; column
    0 is the background when there are several."""
    s = scores.reshape(-1, scores.shape[-1])
    return (s[:, 1:] if s.shape[-1] > 1 else s).max(-1)


def tensor_value(interp, detail) -> np.ndarray:
    """The tensor of ``detail`` (an entry of ``get_tensor_details``) as float64, dequantized."""
    v = interp.get_tensor(detail["index"])
    if v.dtype in (np.int8, np.uint8, np.int16, np.int32):
        scale, zp = detail["quantization"]
        if scale:
            return (v.astype(np.float64) - zp) * scale
    return v.astype(np.float64)


def head_snr(float_path, quant_path, inputs: Sequence[np.ndarray], *, extra: Sequence[str] = (),
             threads: Optional[int] = None, skip_columns: Optional[int] = None) -> dict:
    """SNR (dB) of ``quant_path``'s box encodings and class logits against ``float_path``'s over
    ``inputs`` (preprocessed float model inputs ``[1, H, W, 3]``), plus any ``extra`` tensor names.
    ``"scores"`` compares what the detection op (or the decoder) reads (probabilities when the model ends in a
    sigmoid); ``"boxes_w"`` weighs each anchor's box error by the float model's best class score
    (errors on background anchors never reach a detection). ``"mean"`` is the mean of
    ``boxes_w`` and ``scores``: the selector used to choose between quantization recipes.
    ``skip_columns``: leading class columns left out of ``logits`` and ``scores`` (never read by
    the decoding); None: ``graph.background_columns`` of ``quant_path`` and its sidecar."""
    from ...sidecar import load_sidecar
    from ...tflite import load_interpreter
    from .graph import background_columns

    names = head_tensor_names(tfl.read_model(float_path))
    if skip_columns is None:
        skip_columns = background_columns(tfl.read_model(quant_path), load_sidecar(quant_path))
    wanted = {**names, **{n: n for n in extra}}
    if names["scores"] == names["logits"]:
        wanted.pop("scores")
    fi = load_interpreter(float_path, threads, preserve_all_tensors=True)
    # an integer model gives the same values at any thread count: one thread, no spinning second one
    integer = any(int(t.type) == 9 for t in tfl.read_model(quant_path).subgraphs[0].tensors)
    qi = load_interpreter(quant_path, 1 if integer else threads, preserve_all_tensors=True)
    fd = {d["name"]: d for d in fi.get_tensor_details()}
    qd = {d["name"]: d for d in qi.get_tensor_details()}
    acc = {k: _Acc() for k, n in wanted.items() if n in fd and n in qd}
    if "boxes" in acc:
        acc["boxes_w"] = _Acc()
    fin, qin = fi.get_input_details()[0]["index"], qi.get_input_details()[0]["index"]
    for x in inputs:
        fi.set_tensor(fin, x)
        qi.set_tensor(qin, x)
        fi.invoke()
        qi.invoke()
        values = {k: (tensor_value(fi, fd[wanted[k]]), tensor_value(qi, qd[wanted[k]])) for k in acc if k in wanted}
        for k, (f, q) in values.items():
            if skip_columns and k in ("logits", "scores"):
                f, q = f[..., skip_columns:], q[..., skip_columns:]
            acc[k].add(f, q)
        if "boxes_w" in acc:
            s = values["scores"][0] if "scores" in values else 1 / (1 + np.exp(-values["logits"][0]))
            conf = anchor_confidence(s)
            f, q = values["boxes"]
            acc["boxes_w"].add(f.reshape(conf.size, -1), q.reshape(conf.size, -1), conf[:, None])
    out = {k: round(a.db, 3) for k, a in acc.items()}
    score_key = "scores" if "scores" in out else "logits"
    if "boxes_w" in out and score_key in out:
        out["mean"] = round((out["boxes_w"] + out[score_key]) / 2, 3)
    return out
