"""One place that reads and validates ``params.yaml``.

Every stage calls :func:`load_params` before doing any work, so a typo or a
bad value fails at once with a message that names the key, never hours into a run.
"""
from __future__ import annotations

import copy
import math
import operator
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from hms_core.data.labels import GROUPINGS
from hms_core.io import read_yaml
from hms_core.models.heads import ATTENTION_FEATURES, HEADS
from hms_core.models.hms import MODES, nearest_expert
from hms_core.models.mit import MIT_TRUNKS
from hms_core.models.segmodel import architecture_error
from hms_core.models.trunks import TRUNKS
from hms_core.models.weights import PRETRAINED_IMAGENET, PRETRAINED_NONE

PARAMS_FILE = "params.yaml"
# Pretrained weights files live here: the train stages depend on this folder, so new weights rerun them.
PRETRAINED_DIR = "weights"


class ParamsError(ValueError):
    """A params.yaml value that is missing, of the wrong type, or out of range."""


Check = Callable[[str, Any], None]


def _fail(key: str, expected: str, value: Any) -> None:
    raise ParamsError(f"{PARAMS_FILE}: '{key}' must be {expected}, got {value!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in_range(v: Any, low: float | None, high: float | None) -> bool:
    return (low is None or v >= low) and (high is None or v <= high)


def _is_pair(v: Any, strict: bool) -> bool:
    """``[low, high]``: two positive numbers with ``low <= high`` (``low < high`` if ``strict``)."""
    return (isinstance(v, list) and len(v) == 2 and all(_is_number(x) and x > 0 for x in v)
            and (v[0] < v[1] if strict else v[0] <= v[1]))


def _rule(expected: str, ok: Callable[[Any], bool]) -> Check:
    """The check that a value passes ``ok``, failing with ``'{key}' must be {expected}``."""
    def check(key: str, v: Any) -> None:
        if not ok(v):
            _fail(key, expected, v)
    return check


def integer(low: int | None = None, high: int | None = None) -> Check:
    bounds = f" >= {low}" if high is None else f" in [{low}, {high}]"
    return _rule("an integer" + (bounds if low is not None else ""), lambda v: _is_int(v) and _in_range(v, low, high))


def number(positive: bool = False, low: float | None = None, high: float | None = None) -> Check:
    what = "a positive number" if positive else "a number"
    if low is not None or high is not None:
        what += f" in [{low}, {high}]"
    return _rule(what, lambda v: _is_number(v) and (not positive or v > 0) and _in_range(v, low, high))


def choice(*options: Any) -> Check:
    return _rule("one of " + ", ".join(map(str, options)), lambda v: v in options)


boolean = _rule("true or false", lambda v: isinstance(v, bool))
string = _rule("a non-empty string", lambda v: isinstance(v, str) and v != "")
number_pair = _rule("a pair [low, high] of positive numbers with low <= high", lambda v: _is_pair(v, strict=False))
int_list = _rule("a non-empty list of positive integers",
                 lambda v: isinstance(v, list) and v != [] and all(_is_int(x) and x > 0 for x in v))


def scale_list(key: str, v: Any) -> None:
    """A non-empty list of distinct positive scales that contains 1.0."""
    if not isinstance(v, list) or not v:
        _fail(key, "a non-empty list of positive numbers", v)
    if not all(_is_number(s) and s > 0 for s in v):
        _fail(key, "a list of positive numbers", v)
    if len(set(map(float, v))) != len(v):
        _fail(key, "a list of distinct scales", v)
    if 1.0 not in map(float, v):
        _fail(key, "a list that contains 1.0 (HMS fuses at the scale-1.0 resolution)", v)


def expert_scales(key: str, v: Any) -> None:
    """:func:`scale_list`, written as decimals: DVC names each expert's stage and folder after the
    literal value (``train@1``, ``scale_1``) while the code reads ``scale_1.0``."""
    scale_list(key, v)
    for s in v:
        if isinstance(s, int):
            _fail(key, f"scales written as decimals ({s}.0, not {s}: DVC names each expert's stage and "
                       f"folder after the literal value)", v)


def scale_pairs(key: str, v: Any) -> None:
    """A non-empty list of distinct pairs ``[lo, hi]`` of positive scales with ``lo < hi``."""
    expected = "a non-empty list of distinct pairs [low, high] of positive scales with low < high, e.g. [[0.5, 1.0]]"
    if not (isinstance(v, list) and v and all(_is_pair(p, strict=True) for p in v)
            and len({tuple(map(float, p)) for p in v}) == len(v)):
        _fail(key, expected, v)


def host_port(key: str, v: Any) -> None:
    """``none`` or ``host:port`` (``[v6addr]:port`` for IPv6), as torchrun's ``--rdzv_endpoint`` reads it."""
    if v == "none":
        return
    expected = "none or host:port (e.g. node001:29500), with a port in [1, 65535]"
    host, sep, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and re.fullmatch(r"[\w.:-]+", host) and port.isdigit() and 1 <= int(port) <= 65535):
        _fail(key, expected, v)


def list_of(item: Check) -> Check:
    def check(key: str, v: Any) -> None:
        if not isinstance(v, list) or not v:
            _fail(key, "a non-empty list", v)
        for i, x in enumerate(v):
            item(f"{key}[{i}]", x)
    return check


OPTIMIZATION = {
    "steps": integer(1), "batch_size": integer(1), "crop": integer(16), "lr": number(positive=True),
    "optimizer": choice("sgd", "adamw"), "momentum": number(low=0.0, high=1.0),
    "weight_decay": number(low=0.0), "poly_power": number(low=0.0), "scale_jitter": number_pair,
    "hflip": boolean, "checkpoint_every": integer(1), "log_every": integer(1),
    "class_balance": number(low=0.0, high=2.0),
}

SCHEMA: dict[str, Any] = {
    "seed": integer(0),
    "trunk": choice(*TRUNKS),
    "head": choice(*HEADS),
    "output_stride": choice(8, 16, 32),
    "pretrained": string,
    "scales": expert_scales,
    "model": {"head_channels": integer(1), "attention_channels": integer(1),
              "attention_features": choice(*ATTENTION_FEATURES), "atrous_rates": int_list},
    "data": {
        "root": string,
        "grouping": choice(*GROUPINGS),
        "label_map": string,
        "synthetic": {"train": integer(1), "val": integer(1), "height": integer(32), "width": integer(32)},
        "convert": {"root": string, "splits": list_of(string), "label_map": string},
    },
    "runtime": {"device": string, "workers": integer(0), "deterministic": boolean,
                "amp": choice("bf16", "fp16", "none"), "channels_last": boolean, "compile": boolean,
                "gpus": integer(1), "nodes": integer(1), "rdzv_endpoint": host_port, "rdzv_id": string},
    "train": OPTIMIZATION,
    "hms": {"mode": choice(*MODES), "shared_source_scale": number(positive=True), "shared_pairs": scale_pairs},
    "finetune": {**OPTIMIZATION, "train_all": boolean, "aux_weight": number(low=0.0)},
    "evaluate": {"hms_scales": list_of(scale_list), "flip": boolean, "batch_size": integer(1),
                 "official_check": boolean, "pictures": integer(0), "costs": boolean, "window": integer(0)},
}


def _validate(schema: dict[str, Any], values: Any, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ParamsError(f"{PARAMS_FILE}: '{prefix.rstrip('.') or '<top level>'}' must be a mapping, "
                          f"got {values!r}")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ParamsError(f"{PARAMS_FILE}: unknown key '{prefix}{unknown[0]}'; expected one of "
                          + ", ".join(prefix + k for k in schema))
    for key, rule in schema.items():
        if key not in values:
            raise ParamsError(f"{PARAMS_FILE}: missing key '{prefix}{key}'")
        if isinstance(rule, dict):
            _validate(rule, values[key], f"{prefix}{key}.")
        else:
            rule(prefix + key, values[key])


def _check_architecture(params: dict[str, Any]) -> None:
    """``head``, ``output_stride``, ``model.attention_features`` and ``pretrained`` must fit ``trunk``
    (:func:`hms_core.models.segmodel.architecture_error`)."""
    error = architecture_error(params["trunk"], params["head"], params["output_stride"],
                               params["model"]["attention_features"])
    if error:
        _fail(*error)
    pretrained = params["pretrained"]
    if pretrained not in (PRETRAINED_NONE, PRETRAINED_IMAGENET):
        parts = Path(pretrained).parts
        if Path(pretrained).is_absolute() or parts[:1] != (PRETRAINED_DIR,) or ".." in parts or len(parts) < 2:
            _fail("pretrained", f"none, imagenet or a state-dict file under {PRETRAINED_DIR}/ (e.g. "
                  f"{PRETRAINED_DIR}/resnet50.pt; the train stages depend on that folder, so that new weights "
                  f"rerun them)", pretrained)
    if params["trunk"] in MIT_TRUNKS and pretrained == PRETRAINED_IMAGENET:
        _fail("pretrained", f"none or a path to a state dict for trunk {params['trunk']} (torchvision has no "
              f"ImageNet file for it, and nothing is downloaded)", pretrained)


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check every key and the rules that tie keys together; return ``params``."""
    _validate(SCHEMA, params, "")
    _check_architecture(params)
    scales = {float(s) for s in params["scales"]}
    hms = params["hms"]
    if hms["mode"] == "shared" and float(hms["shared_source_scale"]) not in scales:
        _fail("hms.shared_source_scale", f"one of scales {sorted(scales)}", hms["shared_source_scale"])
    for i, chain in enumerate(params["evaluate"]["hms_scales"]):
        if hms["mode"] == "experts" and any(nearest_expert(scales, s) is None for s in chain):
            _fail(f"evaluate.hms_scales[{i}]", f"scales of experts {sorted(scales)}, or scales without an "
                  f"expert that are nearer to a lower expert than to the top one (they run that expert and "
                  f"its attention head) in experts mode", chain)
    if hms["mode"] == "experts" and len(scales) < 2:
        _fail("scales", "at least two scales for HMS", params["scales"])
    runtime = params["runtime"]
    if runtime["nodes"] > 1 and runtime["rdzv_endpoint"] == "none":
        _fail("runtime.rdzv_endpoint", f"host:port of one of the {runtime['nodes']} nodes (runtime.nodes > 1: "
              f"every node meets the others there)", runtime["rdzv_endpoint"])
    convert = params["data"]["convert"]
    if convert["root"] != "none" and convert["label_map"] == "none":
        _fail("data.convert.label_map", "a label-map file when data.convert.root is set", convert["label_map"])
    if params["evaluate"]["official_check"] and params["data"]["grouping"] == "category_with_void":
        _fail("evaluate.official_check", "false with data.grouping category_with_void (the official evaluator "
              "scores only category or trainid)", params["evaluate"]["official_check"])
    return params


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    return validate(read_yaml(path, ParamsError))


class Tracked(dict):
    """Params that record the dotted paths of the keys read (``train.steps``), for the check that
    each stage's ``params:`` in ``dvc.yaml`` lists every key its script reads (``tests/test_dvc_params.py``).

    A dict in every other respect (``isinstance``, json, yaml, copies, ``{**d}``). Nested mappings
    are wrapped on first access and share one record. Reading a value (``[]``, ``get``, ``in``)
    records its path; reaching a mapping records nothing by itself, only what is then read of it;
    what sees a whole mapping (iteration, ``keys``, ``items``, ``values``, ``len``, ``==``, printing,
    copies, dumps, pickling) records the mapping's path, which covers its every key (at the top
    level: every key). Copies and unpickled copies are plain dicts, but ``torch.load(weights_only=True)``
    refuses a pickled one: what a stage saves with torch holds ``dict(...)`` of it.
    """

    def __init__(self, data: dict[str, Any], read: set[str] | None = None, prefix: str = "") -> None:
        super().__init__(data)
        self.read: set[str] = set() if read is None else read
        self._prefix = prefix

    def _path(self, key: Any) -> str:
        return f"{self._prefix}{key}"

    def _whole(self) -> None:
        self.read.update([self._prefix.rstrip(".")] if self._prefix else map(str, dict.keys(self)))

    def plain(self) -> dict[str, Any]:
        """The values as plain dicts (nothing recorded)."""
        return {k: v.plain() if isinstance(v, Tracked) else v for k, v in dict.items(self)}

    def __getitem__(self, key: Any) -> Any:
        if not super().__contains__(key):
            self.read.add(self._path(key))  # an absent key read is a read too
        value = super().__getitem__(key)
        if isinstance(value, dict) and not isinstance(value, Tracked):
            value = Tracked(value, self.read, self._path(key) + ".")
            super().__setitem__(key, value)  # wrapped once: mutations and identity as in the dict
        if not isinstance(value, Tracked):
            self.read.add(self._path(key))
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        if super().__contains__(key):
            return self[key]
        self.read.add(self._path(key))
        return default

    def pop(self, key: Any, *default: Any) -> Any:
        self.read.add(self._path(key))
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self[key] if super().__contains__(key) else super().setdefault(key, default)

    def __contains__(self, key: Any) -> bool:
        self.read.add(self._path(key))
        return super().__contains__(key)

    # Iteration, keys, items, values, len, ==, printing, copies and pickling: set below the class.


def _whole_then(method: Callable[..., Any], on_plain: bool = False) -> Callable[..., Any]:
    """A :class:`Tracked` method: record the whole mapping, then return ``method`` applied to it (with
    ``on_plain``: to :meth:`Tracked.plain`, so that what it returns holds plain dicts, never Tracked)."""
    def recorded(self: Tracked, *args: Any) -> Any:
        self._whole()
        return method(self.plain() if on_plain else self, *args)
    return recorded


for _name in ("__iter__", "__reversed__", "__len__", "keys", "items", "values", "__eq__", "__ne__"):
    setattr(Tracked, _name, _whole_then(getattr(dict, _name)))
_ON_PLAIN: dict[str, Callable[..., Any]] = {
    "__repr__": repr, "__or__": operator.or_, "__ror__": lambda d, other: other | d,
    "copy": lambda d: d, "__copy__": lambda d: d, "__deepcopy__": copy.deepcopy,
    "__reduce_ex__": lambda d, protocol: (dict, (d,)),  # pickled as dict(...): weights_only refuses it
}
for _name, _method in _ON_PLAIN.items():
    setattr(Tracked, _name, _whole_then(_method, on_plain=True))

for _dumper in (yaml.SafeDumper, yaml.Dumper):
    _dumper.add_representer(Tracked, lambda dumper, data: dumper.represent_dict(data))
