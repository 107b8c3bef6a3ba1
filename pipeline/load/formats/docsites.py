"""Documentation sites as their generators build them: one small profile per generator.

A built documentation page has a shape the generic HTML conversion (pipeline/load/formats/html.py) misses:
permalink marks (Sphinx's `¶`, Docusaurus' `#`) end up in the text and in the heading path, API
entries (Sphinx's `<dl class="py method"><dt class="sig">`) stay body text, code blocks name their
language on a wrapper the generic path does not look at. A profile is detected from the page
(`<meta name="generator">`, then the generator's own class names) and applies, before and during the
generic walk:

- `prepare(root)`: removes the site's chrome inside the content (permalink anchors and their marks,
  "Edit this page", version banners, "Was this page helpful", line numbers, copy buttons);
- `enter(node, w)`: rewrites a few nodes: API entries become headings under their section (the
  signature, whole, is the heading text), admonition titles become a label in front of their text,
  code blocks keep the language their wrapper names.

Pages no profile detects take the generic path unchanged. `detect(tree)` is the one entry point.
"""

from __future__ import annotations

import re
from typing import Optional

from kbingest.pipeline.load.formats.mdtext import fence, heading, squash

MAX_LEVEL = 6  # Markdown's deepest heading
MAX_SIGNATURE = 400  # characters of a signature kept as a heading (the rest is cut with "…")

# text of a permalink anchor (an <a href="#..."> whose whole text is one of these)
_MARKS = frozenset(("¶", "#", "§", "🔗", "\u200b", ""))
# short elements that are page chrome by their text alone
_CHROME_TEXT = re.compile(
    r"(?:was this (?:page|article|section|doc) helpful\??|is this page helpful\??|did this page help you\??|"
    r"edit (?:this page|on github|on gitlab|on bitbucket|source)|view (?:page )?source|show source|"
    r"suggest (?:an )?edit|copy(?: code)?(?: to clipboard)?|copied!?|\[source\])",
    re.I,
)
_CHROME_TAGS = ("a", "p", "button", "summary", "span")
# Sphinx's highlight-<lexer> names that are not a language a reader would name
_LEXER_ALIASES = {
    "default": "python",
    "python3": "python",
    "py3": "python",
    "py": "python",
    "ipython3": "ipython",
    "none": "",
    "text": "",
    "guess": "",
    "plaintext": "",
}
_LANG_CLASS = re.compile(r"^(?:highlight|language|lang)-([\w+#.-]{1,32})$")
LABEL = "data-kbingest-label"  # set by `prepare` on an admonition's title
DROP = "data-kbingest-drop"  # set by `prepare` on what it removes that no selector names
API_UP = 32  # ancestors looked at for the API entry an entry is nested in
API = "data-kbingest-api"  # set by the walk on an API entry it has made a heading of


def _classes(node) -> tuple[str, ...]:
    attrs = node.attributes
    return tuple((attrs.get("class") or "").split()) if attrs else ()


def remove(root, selector: str) -> None:
    """Remove what `selector` matches under `root`. Lexbor lists matches once each, in document order:
    removed in reverse, a node goes before its ancestors (never after one: that would free it twice)."""
    for n in reversed(root.css(selector)):
        n.decompose()


def flat_text(node) -> str:
    """A heading's or a signature's text on one line: inline pieces joined as written."""
    text = node.text(deep=True, separator="")
    return squash(text.replace("\n", " "))


def code_language(node) -> str:
    """The language a code block's wrappers name (Sphinx's `div.highlight-python3`, MkDocs Material's
    `div.language-python`, Prism's `pre.language-js`), up to four levels up; "" when none does."""
    n = node
    for _ in range(5):
        if n is None:
            break
        for cls in _classes(n):
            m = _LANG_CLASS.match(cls)
            if m:
                lang = m.group(1).lower()
                return _LEXER_ALIASES.get(lang, lang)
        n = n.parent
    code = node.css_first("code")
    if code is not None:
        for cls in _classes(code):
            m = _LANG_CLASS.match(cls)
            if m:
                return _LEXER_ALIASES.get(m.group(1).lower(), m.group(1).lower())
    return ""


def code_text(pre) -> str:
    """A code block's text; Prism's per-line spans (Docusaurus) ended by <br> are lines."""
    lines = pre.css("span.token-line")
    if lines:
        return "\n".join(ln.text(deep=True) for ln in lines)
    return pre.text(deep=True)


class Profile:
    """One generator. `drop`: CSS selectors of what is removed from the content before the walk;
    `admonition_title`: the selector of an admonition's title (it becomes a label); `api_heading`:
    selector of headings that carry an API name and may take a signature."""

    name = ""
    drop: tuple[str, ...] = ()
    admonition_title = ""

    def detect(self, tree, generator: str) -> bool:
        raise NotImplementedError

    # ---- before the walk ------------------------------------------------------------------------
    def prepare(self, root) -> None:
        for a in root.css("a[href^='#']"):  # permalink anchors: a mark, or nothing, as their text
            if squash(a.text(deep=True)).lower() in _MARKS and a.css_first("img, code") is None:
                a.attrs[DROP] = ""
        for n in root.css(", ".join(_CHROME_TAGS)):  # its own text first: linear in the page, not in depth x size
            t = n.text(deep=False)
            if len(t) < 48 and _CHROME_TEXT.fullmatch(squash(t)) and squash(n.text(deep=True)) == squash(t):
                n.attrs[DROP] = ""
        remove(root, ", ".join(self.drop + (f"[{DROP}]",)))
        if self.admonition_title:
            for n in root.css(self.admonition_title):
                n.attrs[LABEL] = "1"
        self.reshape(root)

    def reshape(self, root) -> None:
        """The generator's own reshaping of the content before the walk (tabs a reader clicks shown,
        layout-only lists unwrapped); nothing by default."""

    # ---- during the walk ------------------------------------------------------------------------
    def enter(self, node, w) -> Optional[bool]:
        """What the walk does with `node` instead of its generic handling: True (walk the children),
        False (done with it), or None (the generic handling)."""
        tag = node.tag
        if tag == "pre":
            w.flush()
            code = code_text(node)
            w.add(fence(code, code_language(node)) if code.strip() else "")
            return False
        if tag == "table" and "highlighttable" in _classes(node):  # Pygments' line-numbered code
            code = node.css_first("td.code pre") or node.css_first("pre")
            return self.enter(code, w) if code is not None else False
        if tag in ("p", "div", "span", "summary") and LABEL in node.attributes:
            label = flat_text(node)
            w.flush()
            if label:
                label = label[0].upper() + label[1:] if label.islower() else label  # "warning" drawn upper-case by CSS
                w.label = label if label[-1] in ":.!?" else label + ":"
            return False
        return None

    def api_heading(self, node, text: str, level: int, w) -> bool:
        """Write the heading of an API entry (its signature, whole) at `level`."""
        if len(text) > MAX_SIGNATURE:
            text = text[: MAX_SIGNATURE - 1] + "…"
        w.flush()
        w.add(heading(max(1, min(MAX_LEVEL, level)), text))
        return False


# ---- Sphinx ---------------------------------------------------------------------------------------
_SPHINX_DOMAINS = frozenset(("py", "c", "cpp", "js", "rst", "std", "std-option", "http", "dotnet", "java"))


class Sphinx(Profile):
    """Sphinx (any theme: alabaster, Read the Docs, Furo, PyData, Book)."""

    name = "sphinx"
    drop = (
        "a.headerlink",
        "span.viewcode-link",
        "a.viewcode-back",
        "span.linenos",
        "td.linenos",
        "div.toctree-wrapper",
        "div.rst-versions",
        "div.rst-footer-buttons",
        "div.edit-this-page",
        "div.view-this-page",
        "div.announcement",
        "div.bd-header-version-warning",
        "#bd-header-version-warning",
        "div.version-switcher__container",
        "div.sphinx-tabs-tab",
        "button.copybtn",
        "div.feedback",
        "div.helpful",
    )
    admonition_title = "p.admonition-title, p.topic-title, p.sidebar-title"

    def detect(self, tree, generator: str) -> bool:
        if "sphinx" in generator:
            return True
        return (
            tree.css_first(
                "div.sphinxsidebar, a.headerlink[title^='Link to this'], "
                "a.headerlink[title^='Permalink to this'], dt.sig-object, "
                "div.sphinxsidebarwrapper"
            )
            is not None
        )

    def enter(self, node, w) -> Optional[bool]:
        if node.tag == "dl":
            sigs = [c for c in node.iter() if c.tag == "dt"]
            if sigs and self._is_api(node, sigs[0]):
                text = " | ".join(t for t in (self._signature(dt) for dt in sigs) if t)
                depth = self._api_depth(node)
                node.attrs[API] = str(depth)
                if text:
                    self.api_heading(node, text, w.level + depth, w)
                for dt in sigs:
                    dt.decompose()
                return True
        return super().enter(node, w)

    @staticmethod
    def _is_api(dl, dt) -> bool:
        if "sig" in _classes(dt) or "sig-object" in _classes(dt):
            return True
        # Sphinx before 4: <dl class="py function"> (or "function") and a <dt id="...">
        cls = _classes(dl)
        return (
            bool(cls) and cls[0] in _SPHINX_DOMAINS and "field-list" not in cls and dt.attributes.get("id") is not None
        )

    @staticmethod
    def _signature(dt) -> str:
        text = dt.text(deep=True, separator=" " if dt.css_first("dd") is not None else "")
        text = squash(text.replace("\n", " "))
        return re.sub(r"\s+([),\]])", r"\1", re.sub(r"([(\[])\s+", r"\1", text))

    @staticmethod
    def _api_depth(dl) -> int:
        """1 for an API entry directly in a section, 2 for a method of a class, ...: one more than the
        API entry it is nested in (looked for API_UP ancestors up, so the cost stays linear)."""
        n = dl.parent
        for _ in range(API_UP):
            if n is None:
                break
            if n.tag == "dl":
                up = (n.attributes or {}).get(API)
                if up is not None:
                    return int(up) + 1
            n = n.parent
        return 1


# ---- MkDocs (Material, mkdocstrings) ------------------------------------------------------------
class MkDocs(Profile):
    """MkDocs with any theme; Material's chrome; mkdocstrings' API blocks (`doc-heading`, and the
    signature of `separate_signature: true` taken into the heading)."""

    name = "mkdocs"
    drop = (
        "a.headerlink",
        "a.md-content__button",
        "div.md-source-file",
        "aside.md-source-file",
        "form.md-feedback",
        "div.md-feedback",
        "div.md-banner",
        "aside.md-banner",
        "div.md-announce",
        "button.md-clipboard",
        "span.linenos",
        "td.linenos",
        "details.mkdocstrings-source",
        "nav.md-tags",
        "div.md-tags",
    )
    admonition_title = "p.admonition-title, summary"

    def detect(self, tree, generator: str) -> bool:
        if generator.startswith("mkdocs"):
            return True
        return tree.css_first("div.md-content, article.md-typeset, div.doc-contents, h2.doc-heading") is not None

    def enter(self, node, w) -> Optional[bool]:
        tag = node.tag
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and "doc-heading" in _classes(node):
            sig = node.next
            while sig is not None and sig.tag.startswith("-"):  # text between them, comments
                sig = sig.next
            if sig is not None and "doc-signature" in _classes(sig):
                text = flat_text(sig)
                sig.decompose()
            else:
                text = flat_text(node)
            level = int(tag[1])
            w.level = level
            return self.api_heading(node, text, level, w)
        return super().enter(node, w)


# ---- Docusaurus ---------------------------------------------------------------------------------
class Docusaurus(Profile):
    """Docusaurus (the classic theme: `theme-doc-markdown`, Prism code blocks, hash links)."""

    name = "docusaurus"
    drop = (
        "a.hash-link",
        "div.theme-doc-version-banner",
        "span.theme-doc-version-badge",
        "a.theme-edit-this-page",
        "div.theme-doc-footer-edit-meta-row",
        "div.theme-last-updated",
        "footer.theme-doc-footer",
        "nav.pagination-nav",
        "nav.theme-doc-breadcrumbs",
        "div.theme-doc-toc-mobile",
        "div.theme-doc-toc-desktop",
        "div.theme-announcement-bar",
        "ul.tabs",
        "div.buttonGroup__atx",
    )
    admonition_title = "div.theme-admonition > div:first-child, div.admonition-heading"

    def detect(self, tree, generator: str) -> bool:
        if generator.startswith("docusaurus"):
            return True
        return tree.css_first("div.theme-doc-markdown, article div.markdown, div.theme-code-block") is not None

    def reshape(self, root) -> None:
        for panel in root.css("div[role=tabpanel][hidden]"):  # tabs a reader clicks: every one kept
            del panel.attrs["hidden"]


# ---- Javadoc ------------------------------------------------------------------------------------
class Javadoc(Profile):
    """Javadoc (JDK 11 and later): a member's details heading takes its whole signature."""

    name = "javadoc"
    # the summaries repeat each member's first sentence, which its details hold whole
    drop = (
        "a.anchor-link",
        "span.skip-nav",
        "section.summary",
        "div.summary",
        "section.method-summary",
        "section.field-summary",
        "section.constructor-summary",
        "section.nested-class-summary",
    )
    admonition_title = ""
    # lists that only lay the page out (one member per item): their items are sections, not a list
    layout_lists = ("ul.summary-list", "ul.details-list", "ul.member-list", "ul.block-list", "ul.blockList")

    def reshape(self, root) -> None:
        lists = [n for sel in self.layout_lists for n in root.css(sel)]
        items = [li for ul in lists for li in ul.iter() if li.tag == "li"]
        for n in {n.mem_id: n for n in items + lists}.values():
            n.unwrap()

    def detect(self, tree, generator: str) -> bool:
        if generator.startswith("javadoc"):
            return True
        return tree.css_first("div.member-signature, section.detail div.member-signature") is not None

    def enter(self, node, w) -> Optional[bool]:
        tag = node.tag
        if tag in ("h2", "h3", "h4", "h5", "h6"):
            sec = node.parent
            if sec is not None and ("detail" in _classes(sec) or "blockList" in _classes(sec)):
                sig = node.next  # JDK 11+: div.member-signature; before: a <pre>
                while sig is not None and sig.tag.startswith("-"):
                    sig = sig.next
                if sig is not None and not (sig.tag == "pre" or "member-signature" in _classes(sig)):
                    sig = None
                text = flat_text(sig) if sig is not None else flat_text(node)
                if sig is not None:
                    sig.decompose()
                level = int(tag[1])
                w.level = level
                return self.api_heading(node, text or flat_text(node), level, w)
        return super().enter(node, w)


PROFILES: tuple[Profile, ...] = (Docusaurus(), MkDocs(), Javadoc(), Sphinx())


def generator_of(tree) -> str:
    """`<meta name="generator" content=...>`, lower-case ("" when the page has none)."""
    for meta in tree.css("meta[name]"):
        if (meta.attributes.get("name") or "").lower() == "generator":
            return (meta.attributes.get("content") or "").strip().lower()
    return ""


def detect(tree) -> Optional[Profile]:
    """The profile of the generator that built this page, or None (the generic path)."""
    generator = generator_of(tree)
    for profile in PROFILES:
        if profile.detect(tree, generator):
            return profile
    return None
