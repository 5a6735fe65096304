"""One catalog file read into plain Python values, with where each value and key was written.

Files are composed into PyYAML nodes (not loaded straight to Python) so each value keeps the
mark where it was written; the loader reports validation errors and broken references at the
line a person has to edit. The marks are kept as the parser made them and turned into a
Location only when a problem (or a caller of `Catalog.locations`) asks: a 20,000-check
catalog has half a million values, and a Location each cost more than parsing them.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from opsroom.catalog.catalog import Location
from opsroom.secrets.masking import register, secret_name

KeyPath = tuple[str | int, ...]
Add = Callable[[Location | None, str, str], None]

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
MAX_DEPTH = 64  # a self-referencing YAML alias would otherwise recurse forever
_STR = "tag:yaml.org,2002:str"
_MERGE_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")  # what flatten_mapping rewrites
_SAFE = yaml.SafeLoader
# Scalars whose constructor returns the value itself (the others go through construct_object).
_SCALARS: dict[str, Callable[[Any, ScalarNode], Any]] = {
    tag: _SAFE.yaml_constructors[tag] for tag in (
        "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
}
_SEQ, _MAP = _SAFE.DEFAULT_SEQUENCE_TAG, _SAFE.DEFAULT_MAPPING_TAG


class _Resolve:
    """The resolver libyaml's composer calls once per node, without the general machinery (path
    resolvers, which the safe loader has none of, and a list built per call): it was a third of
    composing. Tags are the same as the safe loader's: its implicit resolvers are tried in order
    for a plain scalar whose first character one of them looks at; anything else is a string."""

    yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]]

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> Any:
        if kind is ScalarNode:
            if implicit[0]:  # by the first character they look at ('' for the empty value)
                for tag, regexp in self.yaml_implicit_resolvers.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP

    # Called around every node for path resolvers, which the safe loader has none of.
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None


_C_SAFE: Any = getattr(yaml, "CSafeLoader", None)  # None where PyYAML was built without libyaml
_FAST: Any = type("_FastLoader", (_Resolve, _C_SAFE), {}) if _C_SAFE is not None else None


def compose(text: str) -> yaml.Node | None:
    """YAML nodes with their marks: libyaml where it is built in, the pure-Python parser for a file
    it refuses, so errors read the same either way. The shortcut resolver stands in only while no
    path or catch-all resolver has been added to PyYAML's loaders (none is, in opsroom)."""
    if _FAST is not None and not _FAST.yaml_path_resolvers and None not in _FAST.yaml_implicit_resolvers:
        try:
            return yaml.compose(text, Loader=_FAST)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def location(file: str, mark: yaml.Mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


class Doc:
    """One parsed file: the parser's mark of every value and of every mapping key, by key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[KeyPath, yaml.Mark] = {}
        self.keys: dict[KeyPath, yaml.Mark] = {}
        self._inside: dict[KeyPath, list[tuple[KeyPath, yaml.Mark]]] | None = None

    def at(self, path: KeyPath) -> Location:
        """The value at `path`, else its nearest written parent (a missing field's mapping)."""
        for n in range(len(path), -1, -1):
            mark = self.values.get(path[:n])
            if mark is not None:
                return location(self.file, mark)
        return Location(self.file, 1, 1)

    def key_at(self, path: KeyPath) -> Location | None:
        mark = self.keys.get(path)
        return None if mark is None else location(self.file, mark)

    def inside(self, obj: KeyPath) -> list[tuple[KeyPath, Location]]:
        """(path below the object, location) of everything written inside one object."""
        if self._inside is None:
            grouped: dict[KeyPath, list[tuple[KeyPath, yaml.Mark]]] = defaultdict(list)
            for path, mark in self.values.items():
                if len(path) > 2:
                    grouped[path[:2]].append((path[2:], mark))
            self._inside = grouped
        return [(path, location(self.file, mark)) for path, mark in self._inside.get(obj, ())]


class Locations(dict[tuple[str, ...], Location]):
    """`Catalog.locations`, whose entries for an object are made the first time one is asked for.

    A load that finds no problem never needs them, and making all of them up front (half a
    million for 20,000 checks) cost a third of the load. Every lookup (`[]`, `get`, `in`) sees
    the full entries of the object it names; iterating shows the objects asked about so far.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[tuple[str, str], tuple[Doc, KeyPath]] = {}

    def defer(self, kind: str, name: str, doc: Doc, path: KeyPath) -> None:
        self._pending[(kind, name)] = (doc, path)

    def _fill(self, key: object) -> None:
        if isinstance(key, tuple) and len(key) >= 2 and self._pending:
            found = self._pending.pop(key[:2], None)
            if found is not None:
                doc, path = found
                self[key[:2]] = doc.at(path)
                for below, loc in doc.inside(path):
                    self[(*key[:2], *map(str, below))] = loc

    def __missing__(self, key: tuple[str, ...]) -> Location:
        self._fill(key)
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self._fill(key)
        return dict.__contains__(self, key)

    def get(self, key: tuple[str, ...], default: Any = None) -> Any:
        self._fill(key)
        return dict.get(self, key, default)


class Reader:
    """Turns one file's nodes into plain values, noting every mark in its Doc; `${VAR}` is
    substituted from the environment, duplicate keys are reported where the second one is."""

    def __init__(self, add: Add) -> None:
        self.add = add
        self.unresolved: set[tuple[str, KeyPath]] = set()  # values whose ${VAR} failed
        self.constructor = yaml.SafeLoader("")

    def convert(self, node: Any, doc: Doc, path: KeyPath) -> Any:
        doc.values[path] = node.start_mark
        if len(path) > MAX_DEPTH:
            raise yaml.MarkedYAMLError(problem="nested too deeply (a YAML alias that refers to itself?)",
                                       problem_mark=node.start_mark)
        cls = node.__class__
        if cls is ScalarNode:
            tag = node.tag
            if tag == _STR:
                value = node.value
                return self.interpolate(value, doc, path) if "${" in value else value
            plain = _SCALARS.get(tag)
            value = plain(self.constructor, node) if plain is not None else \
                self.constructor.construct_object(node, deep=True)
            return self.interpolate(value, doc, path) if isinstance(value, str) else value
        if cls is SequenceNode:
            convert = self.convert
            return [convert(item, doc, (*path, i)) for i, item in enumerate(node.value)]
        if cls is not MappingNode:  # a subclass PyYAML never makes; the generic path is exact
            value = self.constructor.construct_object(node, deep=True)
            return self.interpolate(value, doc, path) if isinstance(value, str) else value
        return self.mapping(node, doc, path)

    def mapping(self, node: yaml.MappingNode, doc: Doc, path: KeyPath) -> dict[Any, Any]:
        own: set[int] | None = None  # keys merged in by `<<:` are not this mapping's own: they may be overridden
        for knode, _ in node.value:
            if knode.tag in _MERGE_TAGS:
                own = {id(knode) for knode, _ in node.value}
                self.constructor.flatten_mapping(node)
                break
        out: dict[Any, Any] = {}
        keys, values = doc.keys, doc.values
        for knode, vnode in node.value:
            if knode.__class__ is ScalarNode and knode.tag == _STR:
                key: Any = knode.value
            else:
                key = self.constructor.construct_object(knode, deep=True)
                key = key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)
            kpath = (*path, key)
            if own is None or id(knode) in own:
                first = keys.get(kpath)
                if first is not None:
                    self.add(location(doc.file, knode.start_mark), f"duplicate key '{key}'",
                             f"'{key}' is already set at line {first.line + 1}; YAML would silently keep "
                             "only the last one, so remove one of them")
                keys[kpath] = knode.start_mark
            if vnode.__class__ is ScalarNode and vnode.tag == _STR and len(kpath) <= MAX_DEPTH:
                values[kpath] = vnode.start_mark  # convert's first case, inline: most values are strings
                value = vnode.value
                out[key] = self.interpolate(value, doc, kpath) if "${" in value else value
            else:
                out[key] = self.convert(vnode, doc, kpath)
        return out

    def interpolate(self, text: str, doc: Doc, path: KeyPath) -> str:
        """${NAME} and ${NAME:-default} from the environment, so secrets and hosts stay out of git.

        ${secret:NAME}, and any NAME that says it is a secret (PASSWORD, TOKEN, SECRET, KEY),
        is registered with the masker as it is read: it is `****` in every output from then on.
        """

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            inner = match.group(1)
            body = _VAR_BODY.fullmatch(inner.removeprefix("secret:"))
            secret = body is not None and (inner.startswith("secret:") or secret_name(body.group(1)))
            if body is None:
                self.add(doc.at(path), f"malformed variable reference '{match.group(0)}'",
                         "write ${NAME}, ${NAME:-default} or ${secret:NAME}; write $${ for a literal ${")
            elif body.group(1) in os.environ:
                if secret:
                    register(os.environ[body.group(1)])
                return os.environ[body.group(1)]
            elif body.group(2) is not None:
                if secret:
                    register(body.group(2))
                return body.group(2)
            else:
                name = body.group(1)
                self.add(doc.at(path), f"environment variable {name} is not set",
                         f"set {name} before loading the catalog, or give a default: ${{{name}:-value}}")
            self.unresolved.add((doc.file, path))
            return match.group(0)

        return _VAR.sub(substitute, text) if "${" in text else text
