"""HTML: the page's main content as Markdown, so the Markdown chunker applies unchanged.

selectolax (the Lexbor HTML5 parser, in C) parses; the tree is walked here without recursion
(parent/child/next pointers), so no nesting depth can exhaust the Python stack. Lexbor's tree
builder costs time in proportion to the depth of open block elements, so tags nested deeper than
MAX_DEPTH are removed before parsing (their text is kept): 100,000 nested <div>s load in bounded time.

Kept: headings (as Markdown headings: the heading path), paragraphs, lists, code blocks (fenced,
whole), tables (Markdown tables, whole), the <title> (the document's title). Dropped: navigation,
page headers and footers, sidebars, scripts, styles, forms, cookie and consent banners, images.

A page built by a documentation generator (Sphinx, MkDocs, Docusaurus, Javadoc) is detected by
pipeline/load/formats/docsites.py, whose profile cleans it before the walk and rewrites a few of its nodes
during it (API entries as headings, admonition labels, code languages); the generator's name goes into
the Markdown's front matter (`generator: sphinx`), the document's metadata.
"""

from __future__ import annotations

import codecs
import re
from typing import Optional

import kbingest.pipeline.load.formats.docsites as docsites  # not `from ...formats import`: no cycle through the package (tests/test_architecture.py)
from kbingest.pipeline.load.formats.base import Extracted, Format
from kbingest.pipeline.load.formats.mdtext import escape_line_start, fence, heading, squash, table
from kbingest.pipeline.load.formats.sniff import describe
from kbingest.pipeline.load.formats.text import bom, decode_counting, looks_binary, replaced_warning

MAX_DEPTH = 256  # element nesting kept; deeper tags are dropped, their text kept
META_SCAN_BYTES = 4096  # where a <meta charset> is looked for (the spec says 1024; pages lie)

_META_CHARSET = re.compile(rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^>]*>")
# end tags browsers may omit, and elements that have none: never counted as nesting
_UNCOUNTED = frozenset(
    """area base br col embed hr img input link meta source track wbr param keygen
    p li dt dd option optgroup tr td th thead tbody tfoot colgroup caption rb rt rp html head body""".split()
)
_DROP_TAGS = frozenset(
    """script style noscript template svg math iframe object embed canvas nav aside
    form button select textarea input dialog menu head""".split()
)
_DROP_ROLES = frozenset(
    ("navigation", "banner", "contentinfo", "complementary", "search", "dialog", "alertdialog", "menu", "menubar")
)
_BOILERPLATE = re.compile(
    r"(?:^|[\s_-])(?:cookie|cookies|consent|gdpr|cc-banner|sidebar|side-bar|breadcrumbs?|navbar|nav-bar|"
    r"site-header|site-footer|skip-link|skiplink|share-buttons|social-share)(?:$|[\s_-])",
    re.I,
)
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = frozenset(
    """p div section article main header footer address blockquote figure figcaption
    details summary dl dt dd center hgroup fieldset legend""".split()
)


def decode_html(data: bytes) -> tuple[str, tuple[str, ...]]:
    """Text of an HTML document: charset from the BOM, else a <meta> tag, else UTF-8 with invalid
    bytes replaced (then a warning)."""
    encoding, body = bom(data)
    named = encoding if body is not data else None
    if named is None:
        m = _META_CHARSET.search(data[:META_SCAN_BYTES])
        if m:
            try:
                named = codecs.lookup(m.group(1).decode("ascii")).name
            except (LookupError, UnicodeDecodeError):
                named = None
    if named in ("utf-16", "utf-32"):  # a <meta> naming UTF-16 in ASCII-compatible bytes is a lie
        named = None
    text, replaced = decode_counting(body, named or "utf-8")
    warnings = replaced_warning(replaced, (named or "utf-8").upper())
    return text, warnings


def flatten_deep(html: str, max_depth: int = MAX_DEPTH) -> str:
    """The html with every tag that would open deeper than max_depth removed (and its end tag)."""
    depth = deepest = 0
    for m in _TAG.finditer(html):
        if m.group(2).lower() in _UNCOUNTED:
            continue
        depth = max(0, depth - 1) if m.group(1) else depth + 1
        deepest = max(deepest, depth)
        if deepest > max_depth:
            break
    if deepest <= max_depth:
        return html
    state = [0]

    def keep(m: re.Match) -> str:
        if m.group(2).lower() in _UNCOUNTED or m.group(0).endswith("/>"):
            return m.group(0)
        if m.group(1):
            state[0] = max(0, state[0] - 1)
            return m.group(0) if state[0] < max_depth else ""
        state[0] += 1
        return m.group(0) if state[0] <= max_depth else ""

    return _TAG.sub(keep, html)


def _dropped(node, in_content: bool) -> bool:
    tag = node.tag
    if tag in _DROP_TAGS:
        return True
    if tag in ("header", "footer") and not in_content:
        return True
    attrs = node.attributes
    if not attrs:
        return False
    if (attrs.get("role") or "").lower() in _DROP_ROLES or "hidden" in attrs or attrs.get("aria-hidden") == "true":
        return True
    names = " ".join(v for k, v in attrs.items() if k in ("id", "class") and v)
    return bool(names) and _BOILERPLATE.search(names) is not None


def _code_language(node) -> str:
    for n in (node, node.child):
        if n is None or not n.attributes:
            continue
        for cls in (n.attributes.get("class") or "").split():
            for prefix in ("language-", "lang-", "highlight-source-"):
                if cls.startswith(prefix) and re.fullmatch(r"[\w+#.-]{1,32}", cls[len(prefix) :]):
                    return cls[len(prefix) :]
    return ""


_BLOCK_INSIDE = "br, p, div, li, ul, ol, pre, table, h1, h2, h3, h4, h5, h6"
_BLOCK_IN_HEADING = "br, p, div, li, ul, ol, pre, table"


def _inline_text(node) -> str:
    """The text of a heading or table cell: inline elements joined as written, blocks and <br>
    inside it separated by a space."""
    # Lexbor's css_first() matches the node itself: a heading is looked into for the other blocks only
    sep = " " if node.css_first(_BLOCK_IN_HEADING if node.tag in _HEADINGS else _BLOCK_INSIDE) is not None else ""
    return node.text(deep=True, separator=sep)


def _table(node) -> str:
    return table([[_inline_text(c) for c in tr.iter() if c.tag in ("td", "th")] for tr in node.css("tr")])


class _Writer:
    """Markdown blocks from a walk of the tree: inline text gathers until a block boundary."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.lists: list[list] = []  # per open <ul>/<ol>: [ordered, next number, its marker's width]
        self.marker: Optional[str] = None  # the open list item's marker, until its text is written
        self.in_list_block = False  # the last block is a list its items are added to
        self.quote = 0
        self.level = 0  # the level of the last heading of the page's own (API entries go below it)
        self.label: Optional[str] = None  # an admonition's title ("Note:"), put before its first text

    def text(self, s: str) -> None:
        self.inline.append(s)

    def flush(self) -> None:
        text = "".join(self.inline)
        self.inline = []
        lines = [squash(ln) for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        if not lines:
            return
        if self.label is not None and not self.lists:
            lines[0] = self.label + " " + lines[0]
            self.label = None
        if self.lists:
            indent = " " * sum(lst[2] for lst in self.lists)
            first = self.marker if self.marker is not None else indent
            self.marker = None
            item = "\n".join([first + lines[0]] + [indent + ln for ln in lines[1:]])
            if self.in_list_block:
                self.blocks[-1] += "\n" + item
            else:
                self.blocks.append(item)
                self.in_list_block = True
            return
        lines = [escape_line_start(ln) for ln in lines]
        if self.quote:
            lines = ["> " + ln for ln in lines]
        self.add("\n".join(lines))

    def add(self, block: str) -> None:
        if block.strip():
            if self.label is not None:  # a labelled block that does not start with text: the label alone
                self.blocks.append(self.label)
                self.label = None
            self.blocks.append(block)
            self.in_list_block = False

    def open_list(self, ordered: bool) -> None:
        self.flush()
        self.lists.append([ordered, 1, 2])

    def close_list(self) -> None:
        self.flush()
        self.lists.pop()
        if not self.lists:
            self.in_list_block = False

    def open_item(self) -> None:
        self.flush()
        if self.lists:
            ordered, number, _ = self.lists[-1]
            marker = f"{number}. " if ordered else "- "
            self.lists[-1][1:] = [number + 1, len(marker)]
            self.marker = " " * sum(lst[2] for lst in self.lists[:-1]) + marker

    def markdown(self) -> str:
        self.flush()
        return "\n\n".join(self.blocks) + "\n"


def _main_root(tree):
    for selector in ("main", "[role=main]", "article"):
        found = tree.css(selector)
        if len(found) == 1:
            return found[0], True
    return tree.body, False


def html_to_markdown(html: str) -> tuple[str, Optional[str]]:
    """(Markdown of the main content, the <title>)."""
    markdown, title, _ = convert(html)
    return markdown, title


def convert(html: str) -> tuple[str, Optional[str], Optional[str]]:
    """(Markdown of the main content, the <title>, the documentation generator that built the page
    when a profile of pipeline/load/formats/docsites.py detects one)."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(flatten_deep(html))
    title_node = tree.css_first("title")
    title = squash(title_node.text(deep=True)) if title_node is not None else ""
    site = docsites.detect(tree)
    generator = site.name if site is not None else None
    root, in_content = _main_root(tree)
    w = _Writer()
    if root is None:
        return "", title or None, generator
    if site is not None:
        site.prepare(root)
    # depth-first without recursion: down through .child, across through .next, up through .parent
    node, root_id = root, root.mem_id
    while True:
        opened = _enter(node, w, in_content, site)
        at_root = node.mem_id == root_id
        if opened and node.child is not None:
            node = node.child
            continue
        if opened and not at_root:
            _leave(node, w)  # opened and empty: nothing below to come back up from
        while not at_root and node.next is None:
            node = node.parent
            at_root = node.mem_id == root_id
            _leave(node, w)
        if at_root:
            return w.markdown(), title or None, generator
        node = node.next


def _enter(node, w: _Writer, in_content: bool, site=None) -> bool:
    """Write what `node` starts; True when its children are to be walked (and `_leave` called)."""
    tag = node.tag
    if tag == "-text":
        w.text(node.text_content or "")
        return False
    if tag.startswith("-") or _dropped(node, in_content):  # comments, doctype; boilerplate
        return False
    if site is not None:  # a documentation generator's page: its API entries, admonitions, code blocks
        done = site.enter(node, w)
        if done is not None:
            return done
    if tag in _HEADINGS or tag in ("pre", "table"):
        w.flush()
        if tag == "pre":
            code = node.text(deep=True)
            w.add(fence(code, _code_language(node)) if code.strip() else "")
        elif tag == "table":
            w.add(_table(node))
        else:
            text = _inline_text(node)
            w.level = _HEADINGS[tag]
            w.add(heading(w.level, text))
        return False
    if tag in ("ul", "ol"):
        w.open_list(tag == "ol")
    elif tag == "li":
        w.open_item()
    elif tag == "br":
        w.text("\n")
    elif tag in ("hr", "img"):
        return False
    elif tag == "code":
        w.text("`" + (node.text(deep=True) or "").replace("`", "'") + "`")
        return False
    elif tag == "blockquote":
        w.flush()
        w.quote += 1
    elif tag in _BLOCKS:
        w.flush()
    return True


def _leave(node, w: _Writer) -> None:
    """Close what `_enter` opened (called only for nodes whose children were to be walked)."""
    tag = node.tag
    if tag in ("ul", "ol"):
        w.close_list()
    elif tag == "blockquote":
        w.flush()
        w.quote -= 1
    elif tag == "li" or tag in _BLOCKS:
        w.flush()


class HtmlFormat(Format):
    name = "html"
    suffixes = (".html", ".htm", ".xhtml")
    description = (
        "the main content: headings as the heading path, <title> as the title, paragraphs, "
        "lists, code blocks and tables kept whole; navigation, headers, footers, sidebars, "
        "scripts, styles and cookie banners dropped"
    )

    def identify(self, head: bytes) -> Optional[str]:
        encoding, body = bom(head)
        if encoding != "utf-8":
            return None  # UTF-16/32 text has NUL bytes: decoding decides
        return describe(head) if looks_binary(body) else None

    def extract(self, data: bytes, *, path: str) -> Extracted:
        text, warnings = decode_html(data)
        markdown, title, generator = convert(text)
        if generator is not None and markdown.strip():  # the document's metadata: front matter the chunker reads
            markdown = f"---\ngenerator: {generator}\n---\n" + markdown
        return Extracted(text=markdown, markdown=True, title=title, warnings=warnings)


HTML = HtmlFormat()
