"""Option defaults declared once, in the library: a command's parser takes them from the options dataclass (or
the function) its command runs, and reads them only when that command is parsed or its help shown, so that
``duplex`` starts without importing the trainers (inference never imports training code)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable, Dict, Mapping, Optional

from .common import Parser


def lazy(spec: str) -> Callable[[], object]:
    """A function returning the object ``"package.module:name"`` names, imported when it is first called: a
    command's library code loads only when that command runs or shows its help."""
    module, _, name = spec.partition(":")
    return lambda: getattr(importlib.import_module(module), name)


def defaults_of(spec: str) -> Callable[[], Dict[str, object]]:
    """``OptionsParser``'s ``defaults``: those of the options dataclass, or of the function, ``spec`` names
    (``lazy``)."""

    def defaults() -> Dict[str, object]:
        target = lazy(spec)()
        return dataclass_defaults(target) if dataclasses.is_dataclass(target) else signature_defaults(target)

    return defaults


def dataclass_defaults(options_class) -> Dict[str, object]:
    """{field: default} of the fields of ``options_class`` that have one."""
    defaults = {}
    for field in dataclasses.fields(options_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def signature_defaults(function) -> Dict[str, object]:
    """{parameter: default} of the parameters of ``function`` that have one."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def options_from_args(options_class, args):
    """``options_class`` filled from the parsed arguments of the same names."""
    return options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_class)
                            if hasattr(args, f.name)})


class OptionsParser(Parser):
    """A command parser whose options of the same names as the library's take their defaults from
    ``defaults()`` (a mapping), called once, when the command is parsed or its help is shown."""

    def __init__(self, *args, defaults: Optional[Callable[[], Mapping[str, object]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._library_defaults = defaults

    def _fill_defaults(self) -> None:
        if self._library_defaults is None:
            return
        defaults, self._library_defaults = self._library_defaults(), None
        for action in self._actions:
            if action.option_strings and action.dest in defaults:
                action.default = defaults[action.dest]

    def parse_known_args(self, *args, **kwargs):
        self._fill_defaults()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self) -> str:
        self._fill_defaults()
        return super().format_help()
