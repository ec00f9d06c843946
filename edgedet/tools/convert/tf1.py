"""TensorFlow 1 Object Detection API exports -> ``.tflite`` (needs the ``[convert]`` extra).

Sources: a ``frozen_inference_graph.pb``; the detection zoo's tarball (``.tar.gz`` holding
``<name>/frozen_inference_graph.pb``, ``saved_model/``, ``model.ckpt.*`` and ``pipeline.config``) or
the folder it unpacks to; or the tarball's ``saved_model/`` directory.

The graph is read by its structure, so that any SSD exported by the API converts, not only the
tensor names of one model:

* the body's input is the float image that leaves the ``Preprocessor`` scope; its box encodings
  and class logits are the image-dependent tensors entering the ``Postprocessor`` scope (the
  ``concat`` / ``concat_1`` of the prediction heads); the tensor entering it that does not depend
  on the image is the anchor grid, evaluated once (normalized corners);
* the ``Preprocessor``'s resize op gives the input size and resize kind, its affine ops the
  normalization (``x * 2/255 - 1`` for the zoo's SSDs); the ``Postprocessor`` gives the score
  converter (sigmoid / softmax / none, and the logit scale), the background column (its
  ``Slice``), the box coder's scales (the divisions of the unstacked encodings) and the NMS
  settings (IoU, score threshold, detections per class; the total from the outputs' shape).

``pipeline.config``, when the export has one, is read with a small text-proto reader and compared
with the graph: the graph is what runs, so it wins; disagreements are reported. Labels: a
``labels`` list or file (plain text or a ``.pbtxt`` label map), a label map inside the export, else
the zoo's COCO label map by id for a model of up to 90 classes (with a note), else generic names.

Only the body is converted (``edgedet.tools.convert.tf.convert_loaded``), raw or with the
``TFLite_Detection_PostProcess`` op appended; the float file then goes through ``convert`` (the
quantizers, the sidecar, the atomic publish) like any ``.tflite`` source.

TF's preprocessing resizes with the legacy ``ResizeBilinear`` (``align_corners=False``, no
half-pixel centres: source pixel ``x * in / out``) where OpenCV's ``INTER_LINEAR`` samples at
``(x + 0.5) * in / out - 0.5``; the converted model runs on edgedet's OpenCV preprocessing.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ...errors import ConfigError, ModelError
from .converter import ConvertReport

FROZEN_GRAPH = "frozen_inference_graph.pb"
PIPELINE_CONFIG = "pipeline.config"
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
RESIZE_OPS = ("ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea")
NMS_OPS = ("NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3", "NonMaxSuppressionV4",
           "NonMaxSuppressionV5")
DETECTION_OP_FORMS = {"keep": "fuse", "strip": "strip"}
COCO_IDS = 90  # the zoo's COCO label map: ids 1..90, the API's class i is id i + 1
_AFFINE_OPS = ("Mul", "Sub", "Add", "AddV2", "RealDiv", "Div")
_PASS_OPS = ("Identity", "Squeeze")


# -- text protos (pipeline.config, label maps) -----------------------------------------------------

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{}\[\]:;,<>]|[^\s{}\[\]:;,<>"\'#]+')


def parse_text_proto(text: str) -> dict:
    """A protobuf text-format message as a dict; a field that occurs more than once becomes a list.

    Scalars become int, float, bool or str (enum names stay strings). One-line ``ConfigError``
    when the text is not well formed.
    """
    tokens = [t for t in _TOKEN.findall(text) if not t.startswith("#")]
    msg, pos = _parse_fields(tokens, 0, None)
    return msg


def _parse_fields(tokens: list, pos: int, close: Optional[str]) -> tuple[dict, int]:
    msg: dict = {}
    while pos < len(tokens):
        tok = tokens[pos]
        if tok in ("}", ">"):
            if close is None:
                raise ConfigError(f"text proto: unexpected {tok!r}")
            return msg, pos + 1
        if tok in (";", ","):
            pos += 1
            continue
        key, pos = tok, pos + 1
        if pos < len(tokens) and tokens[pos] == ":":
            pos += 1
        if pos >= len(tokens):
            raise ConfigError(f"text proto: field {key!r} has no value")
        if tokens[pos] in ("{", "<"):
            value, pos = _parse_fields(tokens, pos + 1, "}" if tokens[pos] == "{" else ">")
            _add(msg, key, value)
        elif tokens[pos] == "[":
            pos += 1
            while pos < len(tokens) and tokens[pos] != "]":
                if tokens[pos] != ",":
                    _add(msg, key, _scalar(tokens[pos]))
                pos += 1
            pos += 1
        else:
            _add(msg, key, _scalar(tokens[pos]))
            pos += 1
    if close is not None:
        raise ConfigError("text proto: a message is not closed")
    return msg, pos


def _add(msg: dict, key: str, value) -> None:
    if key not in msg:
        msg[key] = value
    elif isinstance(msg[key], list):
        msg[key].append(value)
    else:
        msg[key] = [msg[key], value]


def _scalar(tok: str):
    if tok[:1] in ('"', "'"):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if tok in ("true", "True"):
        return True
    if tok in ("false", "False"):
        return False
    for kind in (int, float):
        try:
            return kind(tok)
        except ValueError:
            pass
    return tok


def proto_list(msg: dict, key: str) -> list:
    """A repeated field as a list (empty when absent)."""
    value = msg.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def proto_get(msg: dict, path: str, default=None):
    """``proto_get(cfg, "model.ssd.num_classes")``; the first occurrence of a repeated field."""
    node: Any = msg
    for key in path.split("."):
        if isinstance(node, list):
            node = node[0] if node else None
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node[0] if isinstance(node, list) and node and not isinstance(node[0], (int, float)) else node


def read_label_map(path: Union[str, os.PathLike]) -> list[str]:
    """Labels of a ``.pbtxt`` label map (``item { id: 1 display_name: "person" }``), by id:
    entry ``id - 1`` (the model's class column after the background); missing ids read ``n/a``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read label map {path}: {exc}") from exc
    return parse_label_map(text, str(path))


def parse_label_map(text: str, what: str = "label map") -> list[str]:
    """``read_label_map`` of the map's text."""
    items = proto_list(parse_text_proto(text), "item")
    table = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), int) and item["id"] > 0:
            table[item["id"]] = str(item.get("display_name") or item.get("name") or f"class{item['id'] - 1}")
    if not table:
        raise ConfigError(f"{what} has no items with a positive id")
    return [table.get(i, "n/a") for i in range(1, max(table) + 1)]


# -- the export -------------------------------------------------------------------------------------

@dataclass
class Tf1Export:
    """An export as read: its graph, its ``pipeline.config`` (parsed, {} when absent), a label map."""

    path: Path
    kind: str  # frozen_graph | saved_model | tarball
    name: str
    graph_def: Any = field(repr=False)
    pipeline: dict = field(default_factory=dict, repr=False)
    label_map: Optional[list] = None


def is_tf1_export(src: Union[str, os.PathLike]) -> bool:
    """Whether ``src`` looks like a TF1 Object Detection API export (cheap: file names only).

    A ``saved_model/`` counts when a frozen graph sits beside it, or a ``pipeline.config`` and no
    variables (the TF1 exporter freezes them; a TF2 export keeps them).
    """
    path = Path(src)
    name = path.name.lower()
    if path.is_file():
        return name.endswith(TARBALL_SUFFIXES) or (name.endswith(".pb") and name != "saved_model.pb")
    if not path.is_dir():
        return False
    if (path / FROZEN_GRAPH).is_file() or any((p / FROZEN_GRAPH).is_file() for p in path.iterdir() if p.is_dir()):
        return True
    if not (path / "saved_model.pb").is_file():
        return False
    frozen = not any(p.is_file() for p in (path / "variables").glob("*"))
    return (path.parent / FROZEN_GRAPH).is_file() or ((path.parent / PIPELINE_CONFIG).is_file() and frozen)


def read_tf1_export(src: Union[str, os.PathLike]) -> Tf1Export:
    """Read a frozen graph, a zoo tarball (or its unpacked folder) or an export's ``saved_model/``."""
    path = Path(src)
    if not path.exists():
        raise ConfigError(f"source model not found: {path}")
    if path.is_file() and path.name.lower().endswith(TARBALL_SUFFIXES):
        return _read_tarball(path)
    if path.is_file() and path.name == "saved_model.pb":
        path = path.parent
    if path.is_dir():
        if (path / FROZEN_GRAPH).is_file():
            return _with_folder(_frozen(path / FROZEN_GRAPH, path.name, "frozen_graph"), path)
        if (path / "saved_model.pb").is_file():
            export = Tf1Export(path, "saved_model", path.parent.name or path.name, _saved_model_graph(path))
            return _with_folder(export, path.parent)
        inner = [p for p in path.iterdir() if (p / FROZEN_GRAPH).is_file()]
        if len(inner) == 1:
            return read_tf1_export(inner[0])
        raise ConfigError(f"{path}: no {FROZEN_GRAPH} or saved_model.pb (not a TF1 detection export)")
    if path.suffix.lower() != ".pb":
        raise ConfigError(f"unsupported source {path.name}: expected a {FROZEN_GRAPH}, a .tar.gz export or a "
                          "saved_model/ directory")
    return _with_folder(_frozen(path, path.parent.name or path.stem, "frozen_graph"), path.parent)


def _graph_def_from(data: bytes, what: str):
    from .tf import import_tf

    tf, _ = import_tf()
    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{what} is not a TensorFlow GraphDef ({type(exc).__name__})") from exc
    if not gd.node:
        raise ModelError(f"{what} holds an empty graph")
    return gd


def _frozen(path: Path, name: str, kind: str) -> Tf1Export:
    return Tf1Export(path, kind, name, _graph_def_from(path.read_bytes(), str(path)))


def _with_folder(export: Tf1Export, folder: Path) -> Tf1Export:
    """The ``pipeline.config`` and a label map (``*label_map*.pbtxt``) of the export's folder."""
    config = folder / PIPELINE_CONFIG
    if config.is_file():
        export.pipeline = parse_text_proto(config.read_text(encoding="utf-8"))
    maps = sorted(folder.glob("*label_map*.pbtxt"))
    if maps:
        export.label_map = read_label_map(maps[0])
    return export


def _saved_model_graph(folder: Path):
    """The serving graph of a TF1 SavedModel; variables (if any) are frozen into constants."""
    from .tf import import_tf

    tf, _ = import_tf()
    from tensorflow.core.protobuf import saved_model_pb2  # type: ignore

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ModelError(f"{folder}/saved_model.pb is not a SavedModel ({type(exc).__name__})") from exc
    metas = [m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags] or list(sm.meta_graphs)
    if not metas:
        raise ModelError(f"{folder}: the SavedModel has no graph")
    gd = metas[0].graph_def
    if not any(n.op in ("VariableV2", "VarHandleOp") for n in gd.node):
        return gd
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        try:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(folder))
        except Exception as exc:
            raise ModelError(f"{folder}: cannot load the SavedModel's variables ({type(exc).__name__}); "
                             f"convert the export's {FROZEN_GRAPH}") from exc
        outputs = [t.name.split(":")[0] for sig in meta.signature_def.values() for t in sig.outputs.values()]
        return tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), outputs)


def _read_tarball(path: Path) -> Tf1Export:
    """The zoo tarball, read in memory: its frozen graph (else its frozen SavedModel), config, label map."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}

            def read(suffix: str) -> Optional[bytes]:
                hits = sorted((n for n in members if n == suffix or n.endswith("/" + suffix)), key=len)
                return tar.extractfile(members[hits[0]]).read() if hits else None  # type: ignore[union-attr]

            graph = read(FROZEN_GRAPH)
            saved = None if graph is not None else read("saved_model/saved_model.pb")
            config = read(PIPELINE_CONFIG)
            label_names = sorted(n for n in members if "label_map" in n and n.endswith(".pbtxt"))
            label_text = tar.extractfile(members[label_names[0]]).read() if label_names else None  # type: ignore
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"cannot read the tarball {path}: {exc}") from exc
    name = re.sub(r"\.(tar\.gz|tgz|tar)$", "", path.name, flags=re.I)
    if graph is not None:
        gd = _graph_def_from(graph, f"{path}:{FROZEN_GRAPH}")
    elif saved is not None:
        with tempfile.TemporaryDirectory(prefix="edgedet-tf1-") as tmp:
            (Path(tmp) / "saved_model.pb").write_bytes(saved)
            gd = _saved_model_graph(Path(tmp))
    else:
        raise ConfigError(f"{path}: the tarball holds no {FROZEN_GRAPH} nor saved_model/saved_model.pb")
    export = Tf1Export(path, "tarball", name, gd)
    if config is not None:
        export.pipeline = parse_text_proto(config.decode("utf-8"))
    if label_text is not None:
        export.label_map = parse_label_map(label_text.decode("utf-8"), f"{path}:{label_names[0]}")
    return export


# -- reading the graph ------------------------------------------------------------------------------

def _tensor(name: str) -> str:
    name = name.lstrip("^")
    return name if ":" in name else name + ":0"


def _node_of(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _in(name: str, scope: str) -> bool:
    return name.startswith(scope + "/")


class _Graph:
    """Lookups over a GraphDef: nodes, data inputs, consumers, constants, ancestors."""

    def __init__(self, graph_def) -> None:
        from tensorflow.python.framework import tensor_util  # type: ignore

        self._ndarray = tensor_util.MakeNdarray
        self.nodes = {n.name: n for n in graph_def.node}
        self.consumers: dict = defaultdict(list)
        for n in graph_def.node:
            for t in self.inputs(n):
                self.consumers[_node_of(t)].append(n)

    @staticmethod
    def inputs(node) -> list:
        return [_tensor(t) for t in node.input if not t.startswith("^")]

    def node(self, tensor: str):
        return self.nodes.get(_node_of(tensor))

    def const(self, tensor: str) -> Optional[np.ndarray]:
        n = self.node(tensor)
        while n is not None and n.op == "Identity" and n.input:
            n = self.node(n.input[0])
        if n is None or n.op != "Const":
            return None
        return np.asarray(self._ndarray(n.attr["value"].tensor))

    def ancestors(self, tensor: str) -> set:
        seen: set = set()
        stack = [_node_of(tensor)]
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            stack.extend(_node_of(t) for t in self.inputs(self.nodes[name]))
        return seen

    def crossing(self, scope: str, entering: bool) -> list:
        """Tensors entering ``scope`` from outside (not constants), or leaving it."""
        out: list = []
        for n in self.nodes.values():
            for t in self.inputs(n):
                src = self.node(t)
                if src is None or src.op == "Const" or _in(n.name, scope) == _in(src.name, scope):
                    continue
                if _in(n.name, scope) == entering and t not in out:
                    out.append(t)
        return out

    def downstream(self, tensor: str, ops: Sequence[str], depth: int):
        """The nearest node of one of ``ops`` among the consumers of ``tensor`` (breadth first)."""
        frontier, seen = [_node_of(tensor)], set()
        for _ in range(depth):
            nxt = []
            for name in frontier:
                for c in self.consumers.get(name, []):
                    if c.op in ops:
                        return c
                    if c.name not in seen:
                        seen.add(c.name)
                        nxt.append(c.name)
            frontier = nxt
        return None

    def up_to_concat(self, tensor: str) -> str:
        """Through Identity/Squeeze up to the concatenation that makes ``tensor`` (else ``tensor``)."""
        t, n = tensor, self.node(tensor)
        while n is not None and n.op in _PASS_OPS and n.input:
            t, n = _tensor(n.input[0]), self.node(n.input[0])
        return t if n is not None and n.op in ("ConcatV2", "Concat") else tensor


@dataclass
class Tf1Model:
    """What an export's graph says: the body's tensors, its input, decode and NMS settings, anchors."""

    input_tensor: str
    boxes_tensor: str
    scores_tensor: str
    anchors_tensor: str
    input_size: tuple  # (height, width)
    mean: Optional[tuple]  # per channel; None = raw pixels
    std: Optional[tuple]
    resize: dict  # {op, align_corners, half_pixel_centers, size}
    num_classes: int
    background: int
    score_activation: str  # sigmoid | softmax | none
    logit_scale: float
    scales: tuple  # (y, x, h, w) of the box coder
    iou_threshold: float
    score_threshold: float
    max_detections: int
    detections_per_class: int
    anchors: np.ndarray = field(repr=False)  # [N, 4] yxhw, normalized
    found: dict = field(default_factory=dict)  # setting -> "graph" | "pipeline.config" | "default"

    @property
    def num_anchors(self) -> int:
        return int(len(self.anchors))

    def normalization(self) -> list:
        """The sidecar's ``input.normalization`` ([mean, std], per channel when they differ)."""
        if self.mean is None or self.std is None:
            return [0.0, 1.0]
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:
            return [float(self.mean[0]), float(self.std[0])]
        return [[float(m) for m in self.mean], [float(s) for s in self.std]]

    def describe(self) -> dict:
        """The facts recorded in the converted model's sidecar (``source.graph``)."""
        return {"input": self.input_tensor, "box_encodings": self.boxes_tensor, "class_logits": self.scores_tensor,
                "anchors": self.anchors_tensor, "num_anchors": self.num_anchors,
                "input_size": [int(v) for v in self.input_size], "resize": dict(self.resize),
                "normalization": self.normalization(), "num_classes": self.num_classes,
                "background": self.background, "score_activation": self.score_activation,
                "logit_scale": self.logit_scale, "box_scales": [float(v) for v in self.scales],
                "nms": {"iou_threshold": self.iou_threshold, "score_threshold": self.score_threshold,
                        "max_detections": self.max_detections, "detections_per_class": self.detections_per_class},
                "found": dict(self.found)}


def analyze_tf1(export: Tf1Export) -> Tf1Model:
    """Find the body, its anchors and settings in ``export``'s graph (one session run, on a grey image)."""
    g = _Graph(export.graph_def)
    pre_out = [t for t in g.crossing("Preprocessor", entering=False)
               if not any(_in(c.name, "Postprocessor") for c in g.consumers[_node_of(t)])]
    post_in = [g.up_to_concat(t) for t in g.crossing("Postprocessor", entering=True)
               if not _in(_node_of(t), "Preprocessor")]
    if not pre_out or len(post_in) < 3:
        raise ModelError(f"{export.path}: not a TF1 Object Detection API SSD (no Preprocessor -> body -> "
                         "Postprocessor structure)")
    settings = pipeline_settings(export.pipeline)
    resize = _resize(g)
    values = _run_once(g, export.graph_def, pre_out, post_in, resize.get("size") or settings.get("input_size"))
    image = next((t for t in pre_out if values[t].ndim == 4 and values[t].dtype.kind == "f"), None)
    if image is None:
        raise ModelError(f"{export.path}: no float image [1, H, W, C] leaves the Preprocessor")
    ends = _classify_ends(g, image, post_in, values)
    if ends is None:
        shapes = ", ".join(f"{t} {list(values[t].shape)}" for t in post_in)
        raise ModelError(f"{export.path}: cannot tell box encodings, class logits and anchors apart ({shapes})")
    boxes, scores, anchors = ends
    return _settings(g, export, image, boxes, scores, anchors, values, resize, settings)


def _run_once(g: _Graph, graph_def, pre_out: list, post_in: list, size) -> dict:
    """Values of the candidate tensors (and the detections, for their count) on one grey image."""
    from .tf import import_tf

    tf, _ = import_tf()
    h, w = (int(size[0]), int(size[1])) if size else (300, 300)
    placeholders = [n for n in g.nodes.values() if n.op == "Placeholder"]
    image_in = next((n for n in placeholders if n.attr["dtype"].type == 4), None)  # DT_UINT8
    fetches = list(dict.fromkeys(pre_out + post_in))
    if "detection_boxes" in g.nodes:
        fetches.append("detection_boxes:0")
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        if image_in is not None:
            feeds = {image_in.name + ":0": np.full((1, h, w, 3), 128, np.uint8)}
        else:
            feeds = {pre_out[0]: np.zeros((1, h, w, 3), np.float32)}
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                out = sess.run(fetches, feeds)
            except Exception as exc:
                raise ModelError(f"the graph does not run: {str(exc).strip().splitlines()[0][:200]}") from exc
    return {t: np.asarray(v) for t, v in zip(fetches, out)}


def _classify_ends(g: _Graph, image: str, post_in: list, values: dict) -> Optional[tuple]:
    """(box encodings, class logits, anchors) among the tensors entering the Postprocessor."""
    image_node = _node_of(image)
    dependent = [t for t in post_in if image_node in g.ancestors(t) and values[t].dtype.kind == "f"]
    fixed = [t for t in post_in if t not in dependent and values[t].dtype.kind == "f"
             and values[t].ndim == 2 and values[t].shape[-1] == 4]
    if len(dependent) != 2 or len(fixed) != 1:
        return None
    n = values[fixed[0]].shape[0]

    def rows(t: str) -> int:
        v = values[t]
        return int(np.prod(v.shape[:-1])) if v.ndim >= 2 else -1

    if rows(dependent[0]) != n or rows(dependent[1]) != n:
        return None
    four = [t for t in dependent if values[t].shape[-1] == 4]
    if len(four) == 2:  # 3 classes + background: the logits are the ones a score converter reads
        four = [t for t in dependent if g.downstream(t, ("Sigmoid", "Softmax"), 4) is None]
    if len(four) != 1:
        return None
    boxes = four[0]
    scores = next(t for t in dependent if t != boxes)
    return boxes, scores, fixed[0]


def _resize(g: _Graph) -> dict:
    """The Preprocessor's resize op: its kind, corner attributes and (constant) output size."""
    node = next((n for n in g.nodes.values() if n.op in RESIZE_OPS and _in(n.name, "Preprocessor")), None)
    if node is None:
        return {}
    size = g.const(_tensor(node.input[1])) if len(node.input) > 1 else None
    return {"op": node.op, "align_corners": bool(node.attr["align_corners"].b),
            "half_pixel_centers": bool(node.attr["half_pixel_centers"].b),
            "size": [int(v) for v in size.reshape(-1)] if size is not None and size.size == 2 else None}


def _affine(g: _Graph, image: str) -> Optional[tuple]:
    """(a, b) with ``image = a * pixels + b``, from the Mul/Sub/Add/Div-by-constant ops above it."""
    chain, t = [], image
    while True:
        n = g.node(t)
        if n is None:
            break
        if n.op == "Identity":
            t = _tensor(n.input[0])
            continue
        ins = g.inputs(n)
        consts = [g.const(x) for x in ins] if n.op in _AFFINE_OPS and len(ins) == 2 else [None, None]
        if (consts[0] is None) == (consts[1] is None):
            break
        pos = 0 if consts[0] is not None else 1
        chain.append((n.op, consts[pos].astype(np.float64).reshape(-1), pos))
        t = ins[1 - pos]
    if not chain:
        return None
    a, b = np.ones(1), np.zeros(1)
    for op, c, pos in reversed(chain):
        if op == "Mul":
            a, b = a * c, b * c
        elif op in ("Add", "AddV2"):
            b = b + c
        elif op == "Sub":
            a, b = (a, b - c) if pos == 1 else (-a, c - b)
        elif pos == 1:  # x / c
            a, b = a / c, b / c
        else:
            return None  # c / x is not affine
    return a, b


def _score_converter(g: _Graph, scores: str) -> tuple:
    """(activation, logit scale, the node the activation reads or None)."""
    scale = 1.0
    first = g.downstream(scores, ("RealDiv", "Div", "Mul"), 1)
    if first is not None and _in(first.name, "Postprocessor"):
        c = g.const(g.inputs(first)[1])
        if c is not None and c.size == 1 and float(c) != 0:
            scale = float(c) if first.op != "Mul" else 1.0 / float(c)
    act = g.downstream(scores, ("Sigmoid", "Softmax"), 4)
    if act is None or not _in(act.name, "Postprocessor"):
        return "none", scale, None
    return ("sigmoid" if act.op == "Sigmoid" else "softmax"), scale, act


def _background(g: _Graph, scores: str, act) -> Optional[int]:
    """Leading columns the Postprocessor slices off the scores (the background), None if not seen."""
    start = (act.name + ":0") if act is not None else scores
    node = g.downstream(start, ("Slice",), 4)
    if node is None:
        return None
    begin = g.const(g.inputs(node)[1])
    return int(begin.reshape(-1)[-1]) if begin is not None and begin.size else None


def _box_scales(g: _Graph, boxes: str) -> Optional[tuple]:
    """The box coder's (y, x, h, w) scales: the constants the unstacked encodings are divided by."""
    box_node = _node_of(boxes)
    for n in g.nodes.values():
        if n.op != "Unpack" or not _in(n.name, "Postprocessor") or n.attr["num"].i != 4:
            continue
        if box_node not in g.ancestors(n.name):
            continue
        scales = []
        for k in range(4):
            out = f"{n.name}:{k}" if k else n.name
            div = next((c for c in g.consumers.get(n.name, []) if c.op in ("RealDiv", "Div")
                        and _tensor(c.input[0]) == _tensor(out)), None)
            value = g.const(g.inputs(div)[1]) if div is not None else None
            if value is None or value.size != 1:
                break
            scales.append(float(value))
        if len(scales) == 4:
            return tuple(scales)
    return None


def _nms(g: _Graph, values: dict) -> dict:
    """IoU, score threshold and detections per class of the first NMS op; the total from the outputs."""
    out: dict = {}
    node = next((n for n in g.nodes.values() if n.op in NMS_OPS and _in(n.name, "Postprocessor")), None)
    if node is not None:
        ins = g.inputs(node)
        for key, pos in (("iou_threshold", 3), ("score_threshold", 4)):
            c = g.const(ins[pos]) if len(ins) > pos else None
            if c is not None:
                out[key] = float(f"{float(c):.6g}")
        per_class = g.const(ins[2]) if len(ins) > 2 else None
        if per_class is None and g.node(ins[2]) is not None and g.node(ins[2]).op == "Minimum":
            per_class = next((c for c in map(g.const, g.inputs(g.node(ins[2]))) if c is not None), None)
        if per_class is not None:
            out["detections_per_class"] = int(per_class)
    if "detection_boxes:0" in values and values["detection_boxes:0"].ndim == 3:
        out["max_detections"] = int(values["detection_boxes:0"].shape[1])
    return out


# -- pipeline.config --------------------------------------------------------------------------------

_CONVERTERS = {"SIGMOID": "sigmoid", "SOFTMAX": "softmax", "IDENTITY": "none"}


def pipeline_settings(cfg: dict) -> dict:
    """The SSD settings of a parsed ``pipeline.config`` (proto defaults filled in), by ``Tf1Model`` name."""
    ssd = proto_get(cfg, "model.ssd")
    if not isinstance(ssd, dict):
        return {}
    out: dict = {}
    if "num_classes" in ssd:
        out["num_classes"] = int(ssd["num_classes"])
    out["background"] = 1 if proto_get(ssd, "add_background_class", True) else 0
    fixed = proto_get(ssd, "image_resizer.fixed_shape_resizer")
    if isinstance(fixed, dict):
        out["input_size"] = (int(fixed.get("height", 300)), int(fixed.get("width", 300)))
        out["resizer"] = "fixed_shape"
    elif isinstance(proto_get(ssd, "image_resizer"), dict):
        out["resizer"] = next(iter(proto_get(ssd, "image_resizer")), "")
    coder = proto_get(ssd, "box_coder.faster_rcnn_box_coder")
    if isinstance(coder, dict):
        out["scales"] = tuple(float(coder.get(k, d)) for k, d in
                              (("y_scale", 10.0), ("x_scale", 10.0), ("height_scale", 5.0), ("width_scale", 5.0)))
    nms = proto_get(ssd, "post_processing.batch_non_max_suppression")
    if isinstance(nms, dict):
        out["iou_threshold"] = float(nms.get("iou_threshold", 0.6))
        out["score_threshold"] = float(nms.get("score_threshold", 0.0))
        out["max_detections"] = int(nms.get("max_total_detections", 100))
        out["detections_per_class"] = int(nms.get("max_detections_per_class", 100))
    post = proto_get(ssd, "post_processing")
    if isinstance(post, dict):
        out["score_activation"] = _CONVERTERS.get(str(post.get("score_converter", "IDENTITY")), "none")
        out["logit_scale"] = float(post.get("logit_scale", 1.0))
    gen = proto_get(ssd, "anchor_generator.ssd_anchor_generator")
    if isinstance(gen, dict):
        out["anchor_generator"] = gen
    return out


def _config_anchors(gen: dict, height: int, width: int) -> Optional[np.ndarray]:
    """The ``ssd_anchor_generator`` grid of the config ([N, 4] yxhw), None for options we do not model."""
    from .anchors import SsdAnchorSpec, feature_map_sizes, ssd_anchors

    unmodelled = ("scales", "height_stride", "width_stride", "height_offset", "width_offset")
    if any(k in gen for k in unmodelled) or float(gen.get("base_anchor_height", 1.0)) != 1.0 \
            or float(gen.get("base_anchor_width", 1.0)) != 1.0:
        return None
    ratios = tuple(float(r) for r in proto_list(gen, "aspect_ratios")) or (1.0, 2.0, 0.5, 3.0, 0.3333)
    num_layers = int(gen.get("num_layers", 6))
    spec = SsdAnchorSpec(num_layers=num_layers, min_scale=float(gen.get("min_scale", 0.2)),
                         max_scale=float(gen.get("max_scale", 0.95)), aspect_ratios=ratios,
                         interpolated_scale_aspect_ratio=float(gen.get("interpolated_scale_aspect_ratio", 1.0)),
                         reduce_boxes_in_lowest_layer=bool(gen.get("reduce_boxes_in_lowest_layer", True)),
                         feature_map_sizes=tuple(feature_map_sizes(height, width, num_layers)))
    return ssd_anchors(spec)


def cross_check(model: Tf1Model, settings: dict) -> list:
    """Each setting the config states, beside the graph's: ``[{setting, graph, config, agree}]``."""
    checks = []
    for key in ("num_classes", "background", "input_size", "scales", "iou_threshold", "score_threshold",
                "max_detections", "detections_per_class", "score_activation", "logit_scale"):
        if key not in settings or model.found.get(key) != "graph":
            continue
        ours, theirs = getattr(model, key), settings[key]
        if isinstance(theirs, (tuple, list)):
            agree = len(ours) == len(theirs) and bool(np.allclose(ours, theirs, rtol=1e-5, atol=1e-6))
            ours, theirs = [float(v) for v in ours], [float(v) for v in theirs]
        elif isinstance(theirs, float):
            agree = abs(float(ours) - theirs) <= 1e-5 * max(1.0, abs(theirs))
        else:
            agree = ours == theirs
        checks.append({"setting": key, "graph": ours, "config": theirs, "agree": bool(agree)})
    if "anchor_generator" in settings:
        grid = _config_anchors(settings["anchor_generator"], *model.input_size)
        if grid is not None:
            same = grid.shape == model.anchors.shape
            diff = float(np.abs(grid - model.anchors).max()) if same else None
            checks.append({"setting": "anchors", "graph": model.num_anchors, "config": int(len(grid)),
                           "agree": bool(same and diff <= 1e-4), "max_abs_diff": diff})
    return checks


def _settings(g: _Graph, export: Tf1Export, image: str, boxes: str, scores: str, anchors: str, values: dict,
              resize: dict, settings: dict) -> Tf1Model:
    """The model's settings: from the graph, else from pipeline.config, else the API's defaults."""
    from ...postprocess.anchors import to_yxhw

    found: dict = {}
    graph_says: dict = {"input_size": tuple(int(v) for v in values[image].shape[1:3])}
    act, scale, act_node = _score_converter(g, scores)
    graph_says.update(score_activation=act, logit_scale=scale)
    background = _background(g, scores, act_node)
    cols = int(values[scores].shape[-1])
    if background is not None:
        graph_says.update(background=background, num_classes=cols - background)
    graph_says.update(_nms(g, values))
    box_scales = _box_scales(g, boxes)
    if box_scales is not None:
        graph_says["scales"] = box_scales
    defaults = {"background": 1, "scales": (10.0, 10.0, 5.0, 5.0), "iou_threshold": 0.6, "score_threshold": 0.0,
                "max_detections": 100, "detections_per_class": 100}
    chosen: dict = {}
    for key in ("input_size", "score_activation", "logit_scale", "background", "scales", "iou_threshold",
                "score_threshold", "max_detections", "detections_per_class"):
        for origin, table in (("graph", graph_says), ("pipeline.config", settings), ("default", defaults)):
            if key in table:
                chosen[key], found[key] = table[key], origin
                break
    found["num_classes"] = found["background"]
    chosen["num_classes"] = cols - int(chosen["background"])
    if chosen["num_classes"] < 1:
        raise ModelError(f"{export.path}: {cols} class columns leave no class after {chosen['background']} background")
    corners = values[anchors].astype(np.float64)
    if corners.max() > 2.0:  # absolute pixels: normalize to the input
        h, w = chosen["input_size"]
        corners = corners / np.array([h, w, h, w], np.float64)
    ab = _affine(g, image)
    mean = std = None
    if ab is not None:
        a, b = np.broadcast_to(ab[0], (3,)), np.broadcast_to(ab[1], (3,))
        mean, std = tuple(round(float(v), 4) for v in -b / a), tuple(round(float(v), 4) for v in 1.0 / a)
    found["normalization"] = "graph" if ab is not None else "none"
    return Tf1Model(input_tensor=image, boxes_tensor=boxes, scores_tensor=scores, anchors_tensor=anchors,
                    mean=mean, std=std, resize={k: v for k, v in resize.items() if k != "size"} or {"op": "unknown"},
                    anchors=to_yxhw(corners, "yxyx"), found=found, **chosen)


# -- conversion -------------------------------------------------------------------------------------

@dataclass
class Tf1ConvertReport(ConvertReport):
    """``ConvertReport`` plus what was read from the export (``Tf1Model.describe()`` and the config check)."""

    export: dict = field(default_factory=dict)

    def format_summary(self) -> str:
        e = self.export
        lines = [super().format_summary()]
        if e:
            h, w = e["input_size"]
            lines.append(f"  TF1 SSD   {e['num_anchors']} anchors, {e['num_classes']} classes + {e['background']} "
                         f"background, {h}x{w}, scores {e['score_activation']}, box scales "
                         + "/".join(f"{v:g}" for v in e["box_scales"])
                         + f", NMS IoU {e['nms']['iou_threshold']:g} max {e['nms']['max_detections']}")
        disagree = [c for c in e.get("pipeline_config", []) if not c["agree"]]
        if disagree:
            lines.append("  pipeline.config disagrees with the graph (the graph's values are used): "
                         + "; ".join(f"{c['setting']} {c['config']} vs {c['graph']}" for c in disagree))
        return "\n".join(lines)


def body_source(export: Tf1Export, model: Tf1Model):
    """The body (preprocessed image -> box encodings ``[1, N, 4]``, class logits ``[1, N, C]``) as a
    ``TfSource``: the graph imported by ``wrap_function`` and pruned between those tensors."""
    from .tf import TfSource, import_tf

    tf, _ = import_tf()

    def load():
        tf.compat.v1.import_graph_def(export.graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(load, [])
    graph = wrapped.graph
    body = wrapped.prune(feeds=[graph.get_tensor_by_name(model.input_tensor)],
                         fetches=[graph.get_tensor_by_name(model.boxes_tensor),
                                  graph.get_tensor_by_name(model.scores_tensor)])
    n, cols = model.num_anchors, model.num_classes + model.background
    inv_scale = 1.0 / model.logit_scale

    def call(image):
        boxes, logits = body(image)
        logits = tf.reshape(logits, [1, n, cols])
        if inv_scale != 1.0:
            logits = logits * inv_scale
        return {"box_encodings": tf.reshape(boxes, [1, n, 4]), "class_predictions": logits}

    h, w = model.input_size
    holder = tf.Module()
    return TfSource(export.path, "tf1", call, int(h), int(w),
                    {"box_encodings": [1, n, 4], "class_predictions": [1, n, cols]}, loaded=holder)


def resolve_labels(labels, model: Tf1Model, export: Tf1Export, log: Callable[[str], None]) -> list:
    """The model's class names: ``labels`` (list, text file or ``.pbtxt`` label map), the export's
    label map, else the zoo's COCO label map by id (class ``i`` is COCO id ``i + 1``, as the API
    numbers them; said in the log) for up to 90 classes, else ``class0..`` (said in the log)."""
    from ...labels import fit_labels, generic_labels, read_label_file

    n = model.num_classes
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            path = Path(labels)
            names = read_label_map(path) if path.suffix.lower() == ".pbtxt" else read_label_file(path)
            return _fit_padded(names, n, str(path))
        return fit_labels(list(labels), n, source="labels")
    if export.label_map is not None:
        return _fit_padded(export.label_map, n, "the export's label map")
    if n <= COCO_IDS:
        from ...registry import labels_path

        names = fit_labels(read_label_file(labels_path("coco90.txt"))[:n], n, source="coco90.txt")
        shown = ", ".join(names[:3]) + (", ..." if n > 3 else "")
        log(f"note: no label map: assumed COCO ids for the {n} class{'es' if n > 1 else ''} ({shown}); "
            "give --labels if they differ")
        return names
    log(f"note: no labels for the {n} classes: they are named class0..class{n - 1} (give labels)")
    return generic_labels(n)


def _fit_padded(names: list, n: int, source: str) -> list:
    """A label map by id may stop before the model's last class: pad with ``n/a``."""
    from ...labels import fit_labels

    if len(names) < n:
        names = list(names) + ["n/a"] * (n - len(names))
    return fit_labels(names, n, source=source)


def convert_tf1(src, out, *, detection_op: str = "keep", quantize: Optional[str] = None, calibration=None,
                labels=None, threads: Optional[int] = None, num_calib: Optional[int] = None,
                percentile: Union[str, float] = "auto",
                log: Optional[Callable[[str], None]] = None) -> Tf1ConvertReport:
    """Convert a TF1 Object Detection API SSD export ``src`` to ``out`` (.tflite + sidecar).

    ``detection_op``: ``"keep"`` ends the model in ``TFLite_Detection_PostProcess`` (the graph's
    anchors, box scales and NMS settings inside the op); ``"strip"`` writes the raw outputs (box
    encodings, class logits) with ``<out>.anchors.npy`` and the decode settings in the sidecar.
    ``quantize``: None (float32), ``"int8"`` (needs ``calibration``, a folder of images or a
    calibration set), ``"fp16"`` or ``"dynamic"``: edgedet's quantizers applied to the float file.
    ``labels``: a list, a label file or a ``.pbtxt`` label map (default: see ``resolve_labels``).
    ``num_calib`` and ``percentile``: as for ``convert`` (int8 only).
    """
    from .converter import QUANTIZE_MODES

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if detection_op not in DETECTION_OP_FORMS:
        raise ConfigError(f"detection_op must be keep or strip, not {detection_op!r}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
    if quantize == "int8" and calibration is None:
        raise ConfigError("int8 quantization needs calibration images (a folder, or a calibration set)")
    if out.suffix.lower() != ".tflite":
        raise ConfigError(f"output must be a .tflite file: {out}")
    export = read_tf1_export(src)
    model = analyze_tf1(export)
    checks = cross_check(model, pipeline_settings(export.pipeline))
    for c in checks:
        if not c["agree"]:
            log(f"warning: pipeline.config says {c['setting']} {c['config']}, the graph {c['graph']}: "
                "using the graph's")
    resizer = pipeline_settings(export.pipeline).get("resizer", "fixed_shape")
    if resizer != "fixed_shape":
        log(f"note: the export resizes with {resizer}; edgedet stretches frames to {model.input_size}")
    names = resolve_labels(labels, model, export, log)
    h, w = model.input_size
    log(f"{export.kind} {export.name}: SSD {model.num_anchors} anchors, {model.num_classes} classes, {h}x{w}")
    with tempfile.TemporaryDirectory(prefix="edgedet-tf1-") as tmp:
        float_path = Path(tmp) / out.name
        _write_float(export, model, float_path, detection_op, names, src)
        from .converter import convert

        report = convert(float_path, out, quantize=quantize, calibration=calibration, detection_op="keep",
                         num_calib=num_calib, percentile=percentile, threads=threads,
                         measure_speed=quantize is not None, progress=False, log=log)
        _keep_anchors(out, Path(tmp))
    described = {**model.describe(), "pipeline_config": checks}
    _record_source(out, export, described)
    fields = {**report.__dict__, "source": str(src), "size_before": _source_bytes(src),
              "seconds": time.perf_counter() - t0}
    return Tf1ConvertReport(**fields, export=described)


def _write_float(export: Tf1Export, model: Tf1Model, path: Path, detection_op: str, labels: list, src: Path) -> None:
    """The float ``.tflite`` of the body (raw, or with the detection op) and its sidecar."""
    from ...sidecar import update_sidecar
    from .tf import Calibration, convert_loaded, import_tf

    tf, _ = import_tf()
    h, w = model.input_size
    y, x, hh, ww = model.scales
    side = {"input": {"normalization": model.normalization(), "resize": "stretch", "color": "rgb"},
            "postprocess": {"num_classes": model.num_classes, "y_scale": y, "x_scale": x, "h_scale": hh,
                            "w_scale": ww}}
    calib = Calibration(int(h), int(w), model.mean or (0.0, 0.0, 0.0), model.std or (1.0, 1.0, 1.0))
    convert_loaded(tf, body_source(export, model), path, side=side, quantize=None, calibration=calib,
                   detection_op=DETECTION_OP_FORMS[detection_op], anchors=model.anchors, labels=labels,
                   max_detections=model.max_detections, iou_threshold=model.iou_threshold,
                   score_activation=model.score_activation,
                   history={"tool": "edgedet convert (tf1)", "source": str(src)})
    if detection_op == "strip":  # the API's NMS is per class, with its own candidate threshold
        update_sidecar(path, postprocess={"score_threshold": model.score_threshold, "use_regular_nms": True,
                                          "detections_per_class": model.detections_per_class})


def _keep_anchors(out: Path, scratch: Path) -> None:
    """An anchors file the sidecar names inside ``scratch`` is written beside ``out`` instead."""
    from ...sidecar import load_sidecar, resolve_relative, update_sidecar
    from ...tflite import write_atomic

    entry = load_sidecar(out).get("anchors")
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return
    f = resolve_relative(out, entry["file"]).resolve()
    if f.parent == scratch.resolve() and f.is_file():
        dest = out.parent / f"{out.stem}.anchors{f.suffix}"
        write_atomic(dest, f.read_bytes())
        update_sidecar(out, anchors={**entry, "file": dest.name})


def _record_source(out: Path, export: Tf1Export, described: dict) -> None:
    from ...sidecar import update_sidecar
    from ..calibration import sha256_file

    path = export.path
    digest_of = path if path.is_file() else (path / "saved_model.pb")
    update_sidecar(out, name=export.name, source={
        "path": str(path.resolve()), "sha256": sha256_file(digest_of) if digest_of.is_file() else None,
        "format": "tf1-object-detection-api", "export": export.kind, "graph": described})


def _source_bytes(path: Path) -> int:
    if path.is_dir():
        return int(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
    return int(path.stat().st_size) if path.exists() else 0


__all__: Sequence[str] = [
    "Tf1Export", "Tf1Model", "Tf1ConvertReport", "convert_tf1", "read_tf1_export", "analyze_tf1", "is_tf1_export",
    "body_source", "resolve_labels", "pipeline_settings", "cross_check", "parse_text_proto", "proto_get",
    "proto_list", "read_label_map", "parse_label_map",
]
