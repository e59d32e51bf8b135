"""Is an explanation faithful? Find every catalog item and category a text names, and compare.

An explanation of "why item R for this user" is *faithful* when every item it names is either in
the user's history or R itself, and every category it names belongs to one of those items. The
checker is built for precision (a false "unfaithful" costs a regeneration, a false "faithful" lets
an invented claim through, so both matter, but plain English words must not read as titles):

* ``Title (1995)`` forms (with the year) match case-insensitively anywhere, as whole words.
* Titles without the year match only case-sensitively, as whole words; a one-word title must also
  not start a sentence ("Heat is ..." is not a movie) unless it is quoted.
* Quoted spans ("...", “...”, *...*) are compared whole against every title form, ignoring case.
* A capitalized ``Something (1999)`` span that matches no catalog item is an *invented* item.
* Category names (and their plurals) match case-insensitively, outside title spans; placeholder
  categories such as ``unknown`` are never matched.

Overlapping matches keep the longest span ("Toy Story 2" wins over "Toy Story").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llmrec.data.schema import Catalog, Item

# Leading articles that catalogs such as MovieLens move to the end ("Godfather, The").
_ARTICLES = ("The", "A", "An", "Les", "La", "Le", "L'", "Il", "El", "Das", "Der", "Die", "Los", "Las")
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_QUOTED = re.compile(r"\"([^\"\n]{2,200})\"|“([^”\n]{2,200})”|\*([^*\n]{2,200})\*|'([^'\n]{2,200})'(?!\w)")
# A capitalized, title-like phrase followed by a year in parentheses: "Star Wars 9 (2031)".
_TITLE_WITH_YEAR = re.compile(r"(?:[A-Z0-9][\w'’:&.,!?-]*)(?:[ ](?:[\w'’:&.,!?-]+)){0,10}[ ]\((?:1[89]|20)\d{2}\)")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*|[\"“(]\s*)$")
# Category names that are placeholders rather than claims.
_PLACEHOLDER_CATEGORIES = {"unknown", "(no genres listed)", "other", "none", ""}


@dataclass(frozen=True)
class NamedItem:
    """One catalog mention: the text span, where it is, and the item indices it may refer to."""

    span: str
    start: int
    end: int
    candidates: tuple[int, ...]  # several when a bare title is shared ("Hamlet" 1948 / 1996)


@dataclass
class FaithfulnessReport:
    """What a text names, and why it is or is not faithful."""

    faithful: bool
    named_items: list[NamedItem] = field(default_factory=list)
    named_categories: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # one line per violation; empty when faithful


def title_forms(item: Item) -> tuple[set[str], set[str]]:
    """The forms under which a text may name ``item``: ``(with_year, without_year)``.

    ``Godfather, The (1972)`` gives ``{"Godfather, The (1972)", "The Godfather (1972)"}`` and
    ``{"Godfather, The", "The Godfather"}``.
    """
    display = item.display_title().strip()
    year_match = _YEAR_SUFFIX.search(display)
    year = year_match.group(1) if year_match else None
    bare = _YEAR_SUFFIX.sub("", display).strip()
    bases = {bare}
    shorter = _TRAILING_PAREN.sub("", bare).strip()  # "Shanghai Triad (Yao a yao ...)" -> "Shanghai Triad"
    if shorter:
        bases.add(shorter)
    for base in list(bases):
        for article in _ARTICLES:
            suffix = f", {article}"
            if base.endswith(suffix):
                joiner = "" if article.endswith("'") else " "
                bases.add(f"{article}{joiner}{base[: -len(suffix)]}")
    with_year = {f"{b} ({year})" for b in bases} if year else set()
    with_year.add(display)
    without_year = {b for b in bases if len(b) >= 3 and (b[0].isupper() or b[0].isdigit())}
    return with_year, without_year


def _word_pattern(forms: Iterable[str], flags: int) -> re.Pattern[str] | None:
    ordered = sorted(set(forms), key=lambda s: (-len(s), s))  # longest first at each position
    if not ordered:
        return None
    body = "|".join(re.escape(f) for f in ordered)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", flags)


class TitleMatcher:
    """Finds catalog titles in free text (built once per catalog; ~2 ms per explanation on ML-100K)."""

    def __init__(self, catalog: Catalog):
        self._with_year: dict[str, set[int]] = {}  # casefolded form -> item indices
        self._without_year: dict[str, set[int]] = {}  # exact-case form -> item indices
        for index, item in enumerate(catalog):
            with_year, without_year = title_forms(item)
            for form in with_year:
                self._with_year.setdefault(form.casefold(), set()).add(index)
            for form in without_year:
                self._without_year.setdefault(form, set()).add(index)
        self._any_case = {f.casefold(): set(v) for f, v in self._without_year.items()}
        for form, indices in self._with_year.items():
            self._any_case.setdefault(form, set()).update(indices)
        self._year_pattern = _word_pattern(self._with_year, re.IGNORECASE)
        self._bare_pattern = _word_pattern(self._without_year, 0)

    def find(self, text: str) -> list[NamedItem]:
        """Every catalog mention in ``text``, non-overlapping, in text order."""
        found: list[NamedItem] = []
        if self._year_pattern is not None:
            for m in self._year_pattern.finditer(text):
                found.append(_named(m, self._with_year[m.group(0).casefold()]))
        for m in _QUOTED.finditer(text):
            inner = next(g for g in m.groups() if g is not None)
            stripped = inner.strip().strip(".,;:!?").strip()
            indices = self._any_case.get(stripped.casefold())
            if indices:
                start = m.start() + m.group(0).index(inner)
                found.append(NamedItem(stripped, start, start + len(inner), tuple(sorted(indices))))
        if self._bare_pattern is not None:
            for m in self._bare_pattern.finditer(text):
                form = m.group(0)
                if " " not in form and _SENTENCE_START.search(text[: m.start()]):
                    continue  # a capitalized single word at a sentence start is just a word
                found.append(_named(m, self._without_year[form]))
        return _longest_non_overlapping(found)

    def invented(self, text: str, known: Sequence[NamedItem]) -> list[str]:
        """``Title (YYYY)`` spans that overlap no catalog mention: items that do not exist."""
        out = []
        for m in _TITLE_WITH_YEAR.finditer(text):
            if not any(n.start < m.end() and m.start() < n.end for n in known):
                out.append(m.group(0))
        return out


def _named(match: re.Match[str], indices: set[int]) -> NamedItem:
    return NamedItem(match.group(0), match.start(), match.end(), tuple(sorted(indices)))


def _longest_non_overlapping(found: list[NamedItem]) -> list[NamedItem]:
    kept: list[NamedItem] = []
    for cand in sorted(found, key=lambda n: (-(n.end - n.start), n.start)):
        if all(cand.end <= k.start or k.end <= cand.start for k in kept):
            kept.append(cand)
    return sorted(kept, key=lambda n: n.start)


def _category_forms(name: str) -> set[str]:
    """``Comedy`` -> comedy, comedies; ``Thriller`` -> thriller, thrillers; ``Sci-Fi`` -> sci-fi, sci fi."""
    base = name.casefold()
    forms = {base, base + "s", base + "es"}
    if base.endswith("y"):
        forms.add(base[:-1] + "ies")
    if base.endswith("'s"):
        forms.add(base[:-2])  # "Children's" -> "children"
    if "-" in base:
        forms.add(base.replace("-", " "))
    return forms


class CategoryMatcher:
    """Finds category names (and plurals) in text, case-insensitively, as whole words."""

    def __init__(self, categories: Iterable[str]):
        self._by_form: dict[str, str] = {}
        for name in categories:
            if name.strip().casefold() in _PLACEHOLDER_CATEGORIES:
                continue
            for form in _category_forms(name):
                self._by_form.setdefault(form, name)
        self._pattern = _word_pattern(self._by_form, re.IGNORECASE)

    def find(self, text: str, masked: Sequence[tuple[int, int]] = ()) -> list[str]:
        """Category names mentioned in ``text`` outside the ``masked`` spans, first mention first."""
        if self._pattern is None:
            return []
        names: list[str] = []
        for m in self._pattern.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in masked):
                continue
            name = self._by_form[m.group(0).casefold()]
            if name not in names:
                names.append(name)
        return names


def check_faithfulness(
    text: str,
    history_items: Sequence[int],
    recommended_item: int,
    catalog: Catalog,
    categories: Sequence[str] | None = None,
    *,
    titles: TitleMatcher | None = None,
    category_matcher: CategoryMatcher | None = None,
) -> FaithfulnessReport:
    """Check that ``text`` names only the history, the recommended item, and their categories.

    Args:
        text: the explanation.
        history_items: item indices the user interacted with (the evidence the text may cite).
        recommended_item: item index being explained.
        catalog: the catalog the indices refer to.
        categories: category vocabulary to look for (default: every category in the catalog).
        titles: a prebuilt :class:`TitleMatcher` for ``catalog`` (built here when omitted).
        category_matcher: a prebuilt :class:`CategoryMatcher` (built here when omitted).

    Returns:
        A report; ``faithful`` is False with one reason per item or category that is not allowed.
    """
    titles = titles or TitleMatcher(catalog)
    category_matcher = category_matcher or CategoryMatcher(
        catalog.categories() if categories is None else categories
    )
    allowed_items = set(history_items) | {recommended_item}
    allowed_categories = {c for i in allowed_items for c in catalog[i].categories}
    named = titles.find(text)
    reasons = []
    for mention in named:
        if not allowed_items.intersection(mention.candidates):
            ids = ", ".join(catalog[i].item_id for i in mention.candidates[:3])
            reasons.append(f"names {mention.span!r} (item {ids}), which is neither in the history nor recommended")
    for span in titles.invented(text, named):
        reasons.append(f"names {span!r}, which is not an item in the catalog")
    mentioned = category_matcher.find(text, [(n.start, n.end) for n in named])
    for name in mentioned:
        if name not in allowed_categories:
            reasons.append(f"names the category {name!r}, which none of the history or recommended items has")
    return FaithfulnessReport(not reasons, named, mentioned, reasons)
