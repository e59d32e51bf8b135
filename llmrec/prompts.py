"""Prompt templates as data: Jinja2 files in ``prompts/``, rendered in a sandbox.

Every template is rendered by a :class:`jinja2.sandbox.SandboxedEnvironment` with
:class:`jinja2.StrictUndefined`: a template that names a field llmrec does not provide fails when it
is *loaded* (a :class:`PromptError` naming the file, the line and the field), before any model or
data is touched. Titles and other catalog text are passed in as variables, so they are printed
verbatim and never evaluated as template code.

A *sequence template* (``next_item``) also defines four macros that llmrec calls piece by piece,
so each history item can be tokenized on its own and cached (see :mod:`llmrec.serialize`)::

    prefix()              instruction text before the history (must not depend on the history)
    marker(position)      optional text before each history line and, for position num_items+1,
                          the answer marker (absent = empty)
    item_line(item)       one history item, ending in "\\n"
    completion(item)      what follows the answer marker for a target item (title + end marker)

and its body must render to ``prefix() + marker(1) + item_line(h1) + ... + marker(n+1)``. Both
contracts are checked on sample data when the template is loaded. ``prompts/README.md`` lists the
fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

import llmrec
from llmrec.io import atomic_file

TEMPLATE_SUFFIX = ".jinja"
PROMPTS_ENV = "LLMREC_PROMPTS"  # environment variable overriding the default prompts directory
# Top-level fields a template may use; anything else is rejected when the template is loaded.
USER_FIELDS = ("history", "target", "num_items", "tags", "num_tags")
SEQUENCE_MACROS = ("prefix", "item_line", "completion")  # required for sequence templates (marker is optional)


class PromptError(ValueError):
    """A template is missing, malformed, or uses a field llmrec does not provide."""


@dataclass(frozen=True)
class TemplateItem:
    """The fields of one item as a template sees them (``item.title``, ``item.gap``, ...).

    Fields switched off in :class:`~llmrec.config.PromptConfig` are empty (``None`` or ``()``), so
    a template tests them with ``{% if item.rating is not none %}`` / ``{% if item.categories %}``.
    """

    title: str  # display title, exactly as serialized ("Heat (1995)" with include_year)
    item_id: str  # catalog id
    year: str | None = None  # release year when the catalog has one
    categories: tuple[str, ...] = ()  # genres / categories (empty unless include_categories)
    action: str | None = None  # rate | view | purchase ... (None unless include_rating)
    rating: float | None = None  # explicit rating (None unless include_rating and known)
    gap: str | None = None  # time since the previous event, "3 days later" (None unless include_time)
    position: int = 0  # 1-based position in the serialized history (0 for a target)

    @property
    def time_ago(self) -> str | None:
        """Alias of ``gap``."""
        return self.gap


def default_prompts_dir() -> Path:
    """The repository's ``prompts/`` directory (beside the ``llmrec`` package)."""
    return Path(llmrec.__file__).resolve().parents[1] / "prompts"


def resolve_prompts_dir(prompts_dir: str | os.PathLike[str] | None = None) -> Path:
    """``prompts_dir`` if given, else ``$LLMREC_PROMPTS``, else :func:`default_prompts_dir`."""
    if prompts_dir is not None:
        return Path(prompts_dir)
    env = os.environ.get(PROMPTS_ENV)
    return Path(env) if env else default_prompts_dir()


def load_template(name: str, prompts_dir: str | os.PathLike[str] | None = None) -> PromptTemplate:
    """Load and check ``<prompts_dir>/<name>.jinja``.

    Raises:
        PromptError: the file does not exist, does not parse, or uses an unknown field.
    """
    directory = resolve_prompts_dir(prompts_dir)
    path = directory / f"{name}{TEMPLATE_SUFFIX}"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob(f"*{TEMPLATE_SUFFIX}")) if directory.is_dir() else []
        raise PromptError(f"template {name!r} not found: {path} does not exist (templates in {directory}: {known})")
    return load_template_file(path)


def load_template_file(path: str | os.PathLike[str]) -> PromptTemplate:
    """Load one template file verbatim (a run's ``prompts/*.jinja`` at inference)."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"template file {path} does not exist") from None
    return PromptTemplate(path.stem, source, path)


def save_templates(out_dir: str | os.PathLike[str], names: Iterable[str], prompts_dir: str | None = None) -> list[Path]:
    """Copy the exact template files ``names`` into ``out_dir`` (a run's ``prompts/``), atomically each."""
    out = Path(out_dir)
    written = []
    for name in names:
        template = load_template(name, prompts_dir)
        target = out / f"{name}{TEMPLATE_SUFFIX}"
        with atomic_file(target, "wb") as handle, open(template.path, "rb") as source:
            shutil.copyfileobj(source, handle)
        written.append(target)
    return written


class PromptTemplate:
    """One checked template. ``render(**fields)`` for whole prompts; macros for sequence pieces."""

    def __init__(self, name: str, source: str, path: str | os.PathLike[str] | None = None):
        self.name = name
        self.source = source
        self.path = Path(path) if path is not None else Path(f"<{name}>")
        self.sha256 = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self._env = SandboxedEnvironment(
            loader=jinja2.FunctionLoader(lambda _: (source, str(self.path), lambda: True)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
        )
        try:
            self._template = self._env.get_template(name)
            tree = self._env.parse(source)
        except jinja2.TemplateSyntaxError as err:
            raise PromptError(f"template {name} ({self.path}, line {err.lineno}): syntax error: {err.message}") from None
        macros = {m.name: m for m in tree.find_all(nodes.Macro)}
        self._check_fields(tree, set(macros))
        self.is_sequence = all(m in macros for m in SEQUENCE_MACROS)
        self.has_marker = "marker" in macros
        # A line that prints item.position cannot be cached across windows (llmrec.serialize).
        self.line_uses_position = "item_line" in macros and _mentions(macros["item_line"], "position")
        self._macros: Any = None
        self._line_cache: dict[TemplateItem, str] = {}
        self._marker_cache: dict[int, str] = {}
        self._check_sample()

    def __repr__(self) -> str:
        return f"PromptTemplate({self.name!r}, path={str(self.path)!r})"

    def render(self, **fields: Any) -> str:
        """Render the template body with ``fields`` (see ``prompts/README.md``)."""
        return self._call(lambda: self._template.render(**fields))

    # -- sequence pieces ------------------------------------------------------------------------
    def prefix(self) -> str:
        """The instruction before the history."""
        return str(self._call(lambda: self._macro("prefix")()))

    def marker(self, position: int) -> str:
        """Text before history line ``position`` (1-based); ``marker(n + 1)`` is the answer marker."""
        if not self.has_marker:
            return ""
        if position not in self._marker_cache:
            self._marker_cache[position] = str(self._call(lambda: self._macro("marker")(position)))
        return self._marker_cache[position]

    def item_line(self, item: TemplateItem) -> str:
        """One history line (ends in ``"\\n"``); cached per item fields."""
        key = item if self.line_uses_position else dataclasses.replace(item, position=0)
        line = self._line_cache.get(key)
        if line is None:
            line = str(self._call(lambda: self._macro("item_line")(item)))
            if len(self._line_cache) > 1_000_000:
                self._line_cache.clear()
            self._line_cache[key] = line
        return line

    def completion(self, item: TemplateItem) -> str:
        """What follows the answer marker for target ``item`` (title plus end marker)."""
        return str(self._call(lambda: self._macro("completion")(item)))

    # -- internals --------------------------------------------------------------------------------
    def _macro(self, name: str) -> Callable[..., Any]:
        if not self.is_sequence:
            raise PromptError(
                f"template {self.name} ({self.path}) is not a sequence template: it must define the macros "
                f"{', '.join(SEQUENCE_MACROS)} (and optionally marker) to serialize histories"
            )
        if self._macros is None:
            # Building the module runs the body once; sample fields keep StrictUndefined quiet.
            self._macros = self._call(lambda: self._template.make_module(vars=sample_fields()))
        return getattr(self._macros, name)  # type: ignore[no-any-return]

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except jinja2.UndefinedError as err:
            raise PromptError(f"template {self.name} ({self.path}{self._line_of(err)}): unknown field: {err.message}") from None
        except jinja2.exceptions.SecurityError as err:
            raise PromptError(f"template {self.name} ({self.path}{self._line_of(err)}): not allowed: {err}") from None
        except jinja2.TemplateError as err:
            raise PromptError(f"template {self.name} ({self.path}{self._line_of(err)}): {err}") from None

    def _line_of(self, err: BaseException) -> str:
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == str(self.path)]
        return f", line {lines[-1]}" if lines else ""

    def _check_fields(self, tree: nodes.Template, macro_names: set[str]) -> None:
        """Reject top-level names that are neither provided fields, macros nor local variables."""
        declared = jinja2.meta.find_undeclared_variables(tree)
        unknown = sorted(declared - set(USER_FIELDS) - macro_names)
        if unknown:
            where = {n.name: n.lineno for n in tree.find_all(nodes.Name) if n.name in unknown}
            field = unknown[0]
            raise PromptError(
                f"template {self.name} ({self.path}, line {where.get(field, '?')}): unknown field {field!r}; "
                f"fields: {', '.join(USER_FIELDS)} (history items: {', '.join(item_field_names())})"
            )

    def _check_sample(self) -> None:
        """Render once on sample data: catches unknown item fields and broken sequence contracts."""
        fields = sample_fields()
        body = self.render(**fields)
        if not self.is_sequence:
            return
        history = fields["history"]
        pieces = [self.prefix()]
        for item in history:
            pieces += [self.marker(item.position), self.item_line(item)]
        pieces.append(self.marker(len(history) + 1))
        if body != "".join(pieces):
            raise PromptError(
                f"template {self.name} ({self.path}): the body must render to prefix() + marker(i) + item_line(item) "
                f"for each history item + marker(num_items + 1); got {body!r}, pieces give {''.join(pieces)!r}"
            )
        for item in history:
            line = self.item_line(item)
            if not line.endswith("\n") or "\n" in line[:-1]:
                raise PromptError(f"template {self.name} ({self.path}): item_line must be one line ending in a newline, got {line!r}")
        bare = TemplateItem(title=history[0].title, item_id=history[0].item_id, year=history[0].year, position=1)
        if self.completion(bare) != self.item_line(bare):
            raise PromptError(
                f"template {self.name} ({self.path}): completion(item) must equal item_line(item) for an item without "
                f"interaction fields, so a title is tokenized the same in the history and as a target; got "
                f"{self.completion(bare)!r} vs {self.item_line(bare)!r}"
            )


def item_field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TemplateItem)] + ["time_ago"]


def sample_fields() -> dict[str, Any]:
    """Fields with every slot filled: what templates are checked against when loaded."""
    history = [
        TemplateItem("Heat (1995)", "1", "1995", ("Action", "Crime"), "rate", 4.0, None, 1),
        TemplateItem("Fargo (1996)", "2", "1996", ("Crime", "Drama"), "rate", 5.0, "3 days later", 2),
        TemplateItem("Babe (1995)", "3", "1995", ("Children's", "Comedy"), "view", None, "2 hours later", 3),
    ]
    target = TemplateItem("Casablanca (1942)", "4", "1942", ("Drama", "Romance"), None, None, None, 0)
    return {"history": history, "target": target, "num_items": len(history), "tags": ["Action", "Crime", "Drama"], "num_tags": 3}


def _mentions(node: nodes.Node, attribute: str) -> bool:
    """Whether ``node`` reads ``x.<attribute>`` or ``x["<attribute>"]`` anywhere."""
    for sub in node.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(sub, nodes.Getattr) and sub.attr == attribute:
            return True
        if isinstance(sub, nodes.Getitem) and isinstance(sub.arg, nodes.Const) and sub.arg.value == attribute:
            return True
    return False


def template_names(prompts_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the templates in a prompts directory."""
    return sorted(p.stem for p in resolve_prompts_dir(prompts_dir).glob(f"*{TEMPLATE_SUFFIX}"))


__all__: Sequence[str] = (
    "PromptError",
    "PromptTemplate",
    "TemplateItem",
    "default_prompts_dir",
    "load_template",
    "load_template_file",
    "save_templates",
    "template_names",
)
