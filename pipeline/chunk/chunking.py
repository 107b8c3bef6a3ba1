"""Split Markdown / plain text into chunks the embedding model can read whole.

One document goes through:
  front matter -> blocks (markdown-it block tokens, each kept as its raw source lines), grouped into
  sections by heading -> ONE batched token count of every block (through a cache of word counts,
  see _WordCounts) -> blocks over budget cut into atoms (list items, sentences, code lines, table
  rows; then words, then characters) -> greedy packing of whole units per section, with a
  heading-path prefix and an overlap tail on continuation chunks.

Token counts are added up rather than re-counted. The model's BERT pre-tokenizer never lets a token
cross whitespace (or an ASCII punctuation character), so for texts split at whitespace,
count(a + whitespace + b) == count(a) + count(b). Every split below is made at whitespace, except
cuts inside an over-long word: those pieces are counted as they are and never glued back unless the
joined text is counted again. (A counter for another tokenizer must share this property.)
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from operator import itemgetter
from typing import Any, NamedTuple

from markdown_it import MarkdownIt

from kbingest.pipeline.chunk.tokens import TokenCounter, default_counter
from kbingest.pipeline.models import CHUNKER_VERSION, MAX_TOKENS_LIMIT, ChunkSettings  # noqa: F401 (kept importable here)

MAX_DOCUMENT_CHARS = 64_000_000  # larger inputs raise ChunkingError rather than run for minutes
# markdown-it-py costs ~0.2 s/MB plus ~40-250 us per line: larger documents are chunked as plain text
MARKDOWN_MAX_CHARS = 16_000_000
MARKDOWN_MAX_LINES = 50_000
FRONT_MATTER_MAX_LINES = 1000
MAX_HEADING_CHARS = 256  # a heading's text in heading_path is cut to this length
BATCH_MAX_CHARS = 2_000_000  # texts counted per round (bounds the memory a round takes)
MAX_CACHED_WORDS = 500_000  # the word-count cache is emptied beyond this
MAX_CACHED_WORD_CHARS = 64

_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"')\]]*(?=\s)|\Z)", re.S)
_NON_SPACE = re.compile(r"\S")
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_FRONT_MATTER_KEY = re.compile(r"([A-Za-z_][\w.-]*)[ \t]*:(?:[ \t]+(.*))?$")
_INLINE_MARKUP = re.compile(r"[*_`\[\]!<>&\\~]")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
# str.split() splits on these, BERT deletes them (so a word around one is not two words to it)
_SPLIT_BUT_NOT_BERT_SPACE = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
_PRE_TOKEN = re.compile(r"[^!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")  # within a word: ASCII punctuation, runs between


class ChunkingError(Exception):
    """A document that cannot be chunked in bounded time and memory."""


@dataclass(frozen=True)
class ChunkDraft:
    text: str  # the text to embed
    heading_path: str  # headings above it, outermost first, joined with " > " ("" where none)
    position: int  # 0-based index of the chunk within the document


@dataclass(frozen=True)
class ChunkedDocument:
    title: str | None  # front matter `title:`, else the first H1's text, else None
    metadata: dict[str, str]  # front matter scalar key/values, as strings
    chunks: list[ChunkDraft]


# ---- internal structures ---------------------------------------------------------------------


@dataclass(eq=False)
class _Block:
    kind: str  # heading | prose | list | code | table | lines
    text: str  # what is cut into units (for code/table: the body inside head/foot)
    raw: str = ""  # the whole block, used when head/foot are too big to repeat
    head: str = ""  # code: opening fence line; table: header + delimiter rows
    foot: str = ""  # code: closing fence
    item_lines: list[int] = field(default_factory=list)  # list: first line of each item (in text)
    tokens: int | None = None  # None = not counted (too long to fit anyway)
    groups: list[list[tuple[int, int]]] | None = None  # atoms (spans of text), when cut or counted by atoms
    atom_tokens: list[int | None] | None = None  # count per atom, flattened; None = not counted
    head_tokens: int = 0
    foot_tokens: int = 0
    wrap_chars: int = 0  # head + foot + their newlines, added to every piece of the block

    @property
    def wrap_tokens(self) -> int:
        return self.head_tokens + self.foot_tokens


@dataclass(eq=False)
class _Section:
    path: str
    blocks: list[_Block]
    prefix: str = ""  # first line of continuation chunks ("" = none)
    prefix_tokens: int = 0
    prefix_chars: int = 0  # prefix plus the blank line after it


class _Unit(NamedTuple):
    """A span of one block's text that is packed whole. Units of one block that follow each other
    in a chunk are rendered as one span, unless `new_piece` (the span was cut inside a word)."""

    block: int
    start: int
    end: int
    tokens: int
    new_piece: bool = False


# ---- front matter and headings ---------------------------------------------------------------


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """(scalar key/values of a leading `---` YAML block, the rest). Never raises.

    A block that is never closed (within FRONT_MATTER_MAX_LINES), or whose first line is not a
    `key:` line, is not front matter: it stays Markdown (a thematic break, a setext heading...).
    """
    if not text.startswith("---"):
        return {}, text
    first_end = text.find("\n")
    if first_end < 0 or text[:first_end].rstrip() != "---":
        return {}, text
    pos = first_end + 1
    lines: list[str] = []
    while pos < len(text) and len(lines) < FRONT_MATTER_MAX_LINES:
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end]
        if line.rstrip() in ("---", "..."):
            content = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            if content and not _FRONT_MATTER_KEY.match(content[0]):
                return {}, text
            return _parse_front_matter(lines), text[end + 1 :]
        lines.append(line)
        pos = end + 1
    return {}, text


def _parse_front_matter(lines: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for line in lines:
        m = _FRONT_MATTER_KEY.match(line)
        if not m:
            continue  # indented (nested) lines, list items, comments, junk
        value = (m.group(2) or "").strip()
        if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
            value = value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1]
        elif not value or value[0] in "[{|>&*!#":
            continue  # nested mapping, flow collection, block scalar, anchor, tag: not a plain scalar
        else:
            value = re.split(r"\s#", value, maxsplit=1)[0].rstrip()
        meta[m.group(1)] = value
    return meta


def _squash_spaces(text: str) -> str:
    return " ".join(text.split())


def _is_closing_fence(line: str, markup: str) -> bool:
    s = line.strip()
    return len(s) >= len(markup) and s == s[0] * len(s) and s[0] == markup[0]


def _rstrip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [m.span() for m in _SENTENCE.finditer(text, start, end)]


def _line_spans(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in text.split("\n"):
        if line.strip():
            spans.append((pos, pos + len(line.rstrip())))
        pos += len(line) + 1
    return spans


def _word_windows(text: str, start: int, end: int, size: int):
    """(start, end, starts_mid_word) spans of at most `size` characters, cut at whitespace; a word
    longer than `size` is cut every `size` characters."""
    pos, mid_word = start, False
    while True:
        m = _NON_SPACE.search(text, pos, end)
        if not m:
            return
        if m.start() != pos:
            mid_word = False
        pos = m.start()
        stop, cut_in_word = min(pos + size, end), False
        if stop < end and not text[stop].isspace():
            cut = max(text.rfind(" ", pos, stop), text.rfind("\n", pos, stop), text.rfind("\t", pos, stop))
            if cut > pos:
                stop = cut
            else:
                cut_in_word = True
        yield pos, _rstrip_end(text, pos, stop), mid_word
        pos, mid_word = stop, cut_in_word


class _WordCounts:
    """Exact token counts, mostly from caches.

    BERT never lets a token cross whitespace or an ASCII punctuation character, so a text counts as
    the sum of its whitespace-separated words, and a word as the sum of its pieces (punctuation
    characters and the runs between them). Documents reuse the same words over and over: most
    counts are dict look-ups, and only pieces never seen before reach the tokenizer, joined into one
    string per round (one call costs far less than one per piece).
    """

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.words: dict[str, int] = {}
        self.pieces: dict[str, int] = {}

    def count(self, texts: list[str]) -> list[int]:
        out: list[int] = []
        start = 0
        while start < len(texts):  # rounds of bounded size
            stop, size = start, 0
            while stop < len(texts) and (stop == start or size + len(texts[stop]) <= BATCH_MAX_CHARS):
                size += len(texts[stop])
                stop += 1
            out += self._count_round(texts[start:stop])
            start = stop
        return out

    def _count_round(self, texts: list[str]) -> list[int]:
        if len(self.words) + len(self.pieces) > MAX_CACHED_WORDS:
            self.words.clear()
            self.pieces.clear()
        words, pieces = self.words, self.pieces
        words_of = [None if _SPLIT_BUT_NOT_BERT_SPACE.search(t) else t.split() for t in texts]
        seen = set(chain.from_iterable(ws for ws in words_of if ws is not None))
        new_words = [w for w in seen if w not in words]
        if len(new_words) > 20_000 and len(new_words) * 2 > sum(len(ws) for ws in words_of if ws):
            return self.counter.count_batch(texts)  # mostly unseen words (random text): skip the caches
        pieces_of = [_PRE_TOKEN.findall(w) for w in new_words]
        new_pieces = list({p for ps in pieces_of for p in ps if p not in pieces})
        pieces.update(zip(new_pieces, self._count_separately(new_pieces)))
        words.update((w, sum(map(pieces.__getitem__, ps))) for w, ps in zip(new_words, pieces_of))
        odd = [t for t, ws in zip(texts, words_of) if ws is None]
        whole = iter(self.counter.count_batch(odd) if odd else ())
        out = [next(whole) if ws is None else sum(map(words.__getitem__, ws)) for ws in words_of]
        for cache, new in ((words, new_words), (pieces, new_pieces)):
            for key in new:
                if len(key) > MAX_CACHED_WORD_CHARS:  # rare, maybe huge: not worth keeping
                    del cache[key]
        return out

    def _count_separately(self, pieces: list[str]) -> list[int]:
        """Token count of each piece (no whitespace inside), from one tokenizer call on them all."""
        if not pieces:
            return []
        starts = list(accumulate((len(p) + 1 for p in pieces[:-1]), initial=0))
        token_starts = list(map(itemgetter(0), self.counter.offsets(" ".join(pieces))))
        # tokens before each piece's start; consecutive differences are the pieces' counts
        before = list(map(bisect_left, repeat(token_starts), starts)) + [len(token_starts)]
        return [b - a for a, b in zip(before, before[1:])]


# ---- the chunker -----------------------------------------------------------------------------


class Chunker:
    """Chunks one document at a time. Keeps a cache of word token counts across documents, so
    reuse one Chunker for a whole run (one per thread: it is not thread-safe)."""

    def __init__(self, settings: ChunkSettings, counter: TokenCounter | None = None):
        self.settings = settings
        self.counter = counter or default_counter()
        self._word_counts = _WordCounts(self.counter)
        self._md = MarkdownIt("commonmark").enable("table")
        self._md.disable(["inline", "text_join"])  # block structure is all we need
        self._inline_md = MarkdownIt("commonmark")  # heading text only
        # blocks longer than this are counted by atoms (they are most likely over budget and would
        # otherwise be tokenized twice)
        self._atomize_chars = 4 * settings.max_tokens

    def chunk(self, text: str, *, markdown: bool = True) -> ChunkedDocument:
        """Markdown (or, markdown=False, plain text split on blank lines) -> chunks.
        Documents too big for markdown-it in bounded time are chunked as plain text."""
        if len(text) > MAX_DOCUMENT_CHARS:
            raise ChunkingError(f"document of {len(text):,} characters is over the {MAX_DOCUMENT_CHARS:,} limit")
        text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
        metadata, body = split_front_matter(text)
        first_h1 = None
        if markdown and len(body) <= MARKDOWN_MAX_CHARS and body.count("\n") < MARKDOWN_MAX_LINES:
            try:
                sections, first_h1 = self._markdown_sections(body)
            except RecursionError:
                sections = self._plain_sections(body)
        else:
            sections = self._plain_sections(body)
        chunks = [ChunkDraft(t, path, i) for i, (path, t) in enumerate(self._chunk_sections(sections))]
        return ChunkedDocument(metadata.get("title") or first_h1, metadata, chunks)

    # -- blocks ---------------------------------------------------------------------------------
    def _plain_sections(self, body: str) -> list[_Section]:
        blocks = [_Block("prose", p.strip()) for p in _BLANK_LINES.split(body) if p.strip()]
        return [_Section("", blocks)] if blocks else []

    def _markdown_sections(self, body: str) -> tuple[list[_Section], str | None]:
        lines = body.split("\n")
        tokens = self._md.parse(body)
        sections = [_Section("", [])]
        stack: list[tuple[int, str]] = []  # (level, text) of the headings above
        first_h1 = None
        covered = 0  # lines before this are in a block already
        current_list: _Block | None = None
        list_start = 0

        def add_loose_lines(start: int, end: int) -> None:  # lines no block token covers
            raw = "\n".join(lines[start:end]).strip()
            if raw:
                sections[-1].blocks.append(_Block("prose", raw))

        for i, tok in enumerate(tokens):
            if tok.type == "list_item_open" and tok.level == 1 and current_list is not None and tok.map:
                current_list.item_lines.append(tok.map[0] - list_start)
                continue
            if tok.level != 0 or tok.map is None or tok.nesting == -1:
                continue
            start, end = tok.map
            if start > covered:
                add_loose_lines(covered, start)
            covered = max(covered, end)
            raw = "\n".join(lines[start:end]).rstrip()
            current_list = None
            if not raw.strip() or tok.type == "hr":  # a thematic break carries no content
                continue
            if tok.type == "heading_open":
                level = int(tok.tag[1:])
                heading = self._heading_text(tokens[i + 1].content if i + 1 < len(tokens) else "")
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, heading))
                if first_h1 is None and level == 1 and heading:
                    first_h1 = heading
                sections.append(_Section(" > ".join(h for _, h in stack if h), [_Block("heading", raw)]))
            elif tok.type in ("bullet_list_open", "ordered_list_open"):
                current_list, list_start = _Block("list", raw), start
                sections[-1].blocks.append(current_list)
            elif tok.type == "fence":
                sections[-1].blocks.append(self._fence_block(lines[start:end], tok.markup, raw))
            elif tok.type == "table_open":
                sections[-1].blocks.append(self._table_block(lines[start:end], raw))
            elif tok.type in ("code_block", "html_block"):
                sections[-1].blocks.append(_Block("lines", raw))
            else:  # paragraph, blockquote, anything else
                sections[-1].blocks.append(_Block("prose", raw))
        if covered < len(lines):
            add_loose_lines(covered, len(lines))
        return [s for s in sections if s.blocks], first_h1

    @staticmethod
    def _fence_block(lines: list[str], markup: str, raw: str) -> _Block:
        closed = len(lines) >= 2 and _is_closing_fence(lines[-1], markup)
        body = "\n".join(lines[1:-1] if closed else lines[1:]).rstrip()
        if not body.strip():
            return _Block("lines", raw)
        foot = lines[-1].strip() if closed else markup
        return _Block("code", body, raw=raw, head=lines[0].rstrip(), foot=foot)

    @staticmethod
    def _table_block(lines: list[str], raw: str) -> _Block:
        body = "\n".join(lines[2:]).rstrip()
        if len(lines) < 3 or not body.strip():
            return _Block("lines", raw)
        return _Block("table", body, raw=raw, head=lines[0].rstrip() + "\n" + lines[1].rstrip())

    def _heading_text(self, content: str) -> str:
        content = content[: MAX_HEADING_CHARS * 4]
        if not _INLINE_MARKUP.search(content):
            text = content
        elif len(content) > 1000:  # pathological heading: a cheap approximation is enough
            text = re.sub(r"[*_`]", "", _MD_LINK.sub(r"\1", content))
        else:
            parts = []
            for child in self._inline_md.parseInline(content)[0].children or []:
                if child.type in ("text", "text_special", "code_inline", "image"):
                    parts.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    parts.append(" ")
            text = "".join(parts)
        return _squash_spaces(text)[:MAX_HEADING_CHARS].rstrip()

    # -- counting -------------------------------------------------------------------------------
    def _chunk_sections(self, sections: list[_Section]) -> list[tuple[str, str]]:
        s = self.settings
        # 1. ONE batched count: prefixes, wrappers, and each block -- or, for a block long enough to
        #    be over budget, its atoms (the block's count is then their sum).
        texts: list[str] = []
        slots: list[tuple[Any, str | int]] = []

        def want(target: Any, key: str | int, text: str) -> None:
            """Count `text` into target.key (an attribute), or target[key] (a list's item)."""
            texts.append(text)
            slots.append((target, key))

        for sec in sections:
            if sec.path:
                sec.prefix = sec.path[: s.max_chars // 4].rstrip()
                want(sec, "prefix_tokens", sec.prefix)
            for b in sec.blocks:
                if b.head:
                    want(b, "head_tokens", b.head)
                if b.foot:
                    want(b, "foot_tokens", b.foot)
                if len(b.text) > self._atomize_chars:
                    self._want_atoms(b, want)
                elif b.text:
                    want(b, "tokens", b.text)
        self._count_into(texts, slots)

        # 2. budgets per section; blocks whose atoms are not counted yet get a second batch (rare)
        texts, slots = [], []
        for sec in sections:
            self._fit_prefix(sec)
            for b in sec.blocks:
                self._set_wrapper(b, s.max_tokens - sec.prefix_tokens, s.max_chars - sec.prefix_chars)
                if not self._fits_whole(sec, b) and b.groups is None:
                    self._want_atoms(b, want)
        self._count_into(texts, slots)

        # 3. units, then packing, section by section
        out: list[tuple[str, str]] = []
        for sec in sections:
            units: list[_Unit] = []
            for bi, b in enumerate(sec.blocks):
                whole = self._whole_tokens(sec, b)
                if whole is not None:
                    units.append(_Unit(bi, 0, len(b.text), whole))
                else:
                    units += [u._replace(block=bi) for u in self._units_from_atoms(sec, b)]
            out += [(sec.path, text) for text in self._pack(sec, units)]
        return out

    def _want_atoms(self, b: _Block, want) -> None:
        b.groups = self._atom_groups(b)
        spans = [span for group in b.groups for span in group]
        b.atom_tokens = [None] * len(spans)
        for i, (a, e) in enumerate(spans):
            if e - a <= self.settings.max_chars:  # longer ones are cut by characters anyway
                want(b.atom_tokens, i, b.text[a:e])

    def _count_into(self, texts: list[str], slots: list[tuple[Any, str | int]]) -> None:
        for (target, key), n in zip(slots, self._count(texts)):
            if isinstance(key, int):
                target[key] = n
            else:
                setattr(target, key, n)

    def _fits_whole(self, sec: _Section, b: _Block) -> bool:
        return self._whole_tokens(sec, b) is not None

    def _whole_tokens(self, sec: _Section, b: _Block) -> int | None:
        """The block's token count when it fits whole in a chunk of this section, else None."""
        if b.tokens is None and b.atom_tokens is not None:
            counted = [t for t in b.atom_tokens if t is not None]
            if len(counted) == len(b.atom_tokens):
                b.tokens = sum(counted)  # whitespace-separated atoms: counts add up
        if (
            b.tokens is not None
            and b.wrap_tokens + b.tokens <= self.settings.max_tokens - sec.prefix_tokens
            and b.wrap_chars + len(b.text) <= self.settings.max_chars - sec.prefix_chars
        ):
            return b.tokens
        return None

    def _fit_prefix(self, sec: _Section) -> None:
        """Keep the heading-path prefix within a quarter of the token budget (cut it, or drop it)."""
        limit = self.settings.max_tokens // 4
        if sec.prefix and sec.prefix_tokens > limit:
            offsets = self.counter.offsets(sec.prefix)
            sec.prefix = sec.prefix[: offsets[limit][0]].rstrip()
            sec.prefix_tokens = self.counter.count(sec.prefix)
            if sec.prefix_tokens > limit or not sec.prefix:
                sec.prefix, sec.prefix_tokens = "", 0
        sec.prefix_chars = len(sec.prefix) + 2 if sec.prefix else 0

    @staticmethod
    def _set_wrapper(b: _Block, max_t: int, max_c: int) -> None:
        """Code and tables repeat their head (and foot) in every piece; drop them when too big."""
        if not b.head:
            return
        b.wrap_chars = len(b.head) + 1 + (len(b.foot) + 1 if b.foot else 0)
        if b.wrap_tokens > max_t // 2 or b.wrap_chars > max_c // 2:
            b.kind, b.text, b.head, b.foot, b.tokens = "lines", b.raw, "", "", None
            b.groups = b.atom_tokens = None
            b.head_tokens = b.foot_tokens = b.wrap_chars = 0

    @staticmethod
    def _atom_groups(b: _Block) -> list[list[tuple[int, int]]]:
        """Spans of an oversize block: one group per list item (sentences), else one atom per group."""
        if b.kind in ("code", "table", "lines"):
            return [[span] for span in _line_spans(b.text)]
        if b.kind == "list" and len(b.item_lines) > 1:
            line_starts = [0]
            for line in b.text.split("\n"):
                line_starts.append(line_starts[-1] + len(line) + 1)
            starts = sorted({0} | {line_starts[k] for k in b.item_lines if k < len(line_starts) - 1})
            bounds = zip(starts, starts[1:] + [len(b.text)])
            groups = [_sentence_spans(b.text, a, _rstrip_end(b.text, a, e)) for a, e in bounds]
            return [g for g in groups if g]
        return [[span] for span in _sentence_spans(b.text, 0, len(b.text))]

    def _units_from_atoms(self, sec: _Section, b: _Block) -> list[_Unit]:
        """Whole list items (or other groups) that fit, else their atoms, else atoms cut smaller."""
        max_t = self.settings.max_tokens - sec.prefix_tokens - b.wrap_tokens
        max_c = self.settings.max_chars - sec.prefix_chars - b.wrap_chars
        assert b.groups is not None and b.atom_tokens is not None, "the block's atoms are counted first"
        counts = iter(b.atom_tokens)
        units: list[_Unit] = []
        for group in b.groups:
            atoms = [(a, e, next(counts)) for a, e in group]
            counted = [t for _, _, t in atoms if t is not None]
            if len(counted) == len(atoms):
                group_tokens = sum(counted)
                if group_tokens <= max_t and group[-1][1] - group[0][0] <= max_c:
                    units.append(_Unit(0, group[0][0], group[-1][1], group_tokens))
                    continue
            for a, e, t in atoms:
                if t is not None and t <= max_t and e - a <= max_c:
                    units.append(_Unit(0, a, e, t))
                else:
                    units += self._split_long_span(b.text, a, e, max_t, max_c)
        return units

    # -- cutting a span with no sentence boundary: words, then characters ------------------------
    def _split_long_span(self, text: str, start: int, end: int, max_t: int, max_c: int) -> list[_Unit]:
        """Windows of whole words of at most max_t characters: a character is (nearly always) at
        most one token, so one count settles them. Windows cut at whitespace are glued back together
        by the packer (their counts add up); pieces of one over-long word are re-joined here."""
        windows = list(_word_windows(text, start, end, min(max_t, max_c)))
        units: list[_Unit] = []
        for (a, e, mid_word), n in zip(windows, self._count([text[a:e] for a, e, _ in windows])):
            if n <= max_t:
                units.append(_Unit(0, a, e, n, mid_word))
            else:
                units += self._cut_by_chars(text, a, e, max_t, mid_word)
        return self._join_word_pieces(text, units, max_t, max_c)

    def _join_word_pieces(self, text: str, units: list[_Unit], max_t: int, max_c: int) -> list[_Unit]:
        """Re-join consecutive pieces of one long word (e.g. a 10 MB [UNK]) up to the budget; the
        joined text is re-counted, since a token may span a cut inside a word."""
        groups: list[list[_Unit]] = []
        for u in units:
            g = groups[-1] if groups else None
            if u.new_piece and g and sum(x.tokens for x in g) + u.tokens <= max_t and u.end - g[0].start <= max_c:
                g.append(u)
            else:
                groups.append([u])
        joined = [g for g in groups if len(g) > 1]
        counts = self._count([text[g[0].start : g[-1].end] for g in joined])
        accepted = {id(g): n for g, n in zip(joined, counts) if n <= max_t}
        out: list[_Unit] = []
        for g in groups:
            if id(g) in accepted:
                out.append(_Unit(0, g[0].start, g[-1].end, accepted[id(g)], g[0].new_piece))
            else:
                out += g
        return out

    def _cut_by_chars(self, text: str, start: int, end: int, max_t: int, mid_word: bool) -> list[_Unit]:
        """Last resort: halve the slices until each one fits."""
        size, todo, units = max(1, (end - start) // 2), [(start, end)], []
        while todo:
            slices = [(pos, min(pos + size, e)) for a, e in todo for pos in range(a, e, size)]
            todo = []
            for (a, e), n in zip(slices, self._count([text[a:e] for a, e in slices])):
                if not text[a:e].strip():
                    continue
                if n <= max_t or e - a == 1:
                    units.append(_Unit(0, a, e, n, mid_word or a != start))
                else:
                    todo.append((a, e))
            size = max(1, size // 2)
        units.sort(key=lambda u: u.start)
        return units

    def _count(self, texts: list[str]) -> list[int]:
        return self._word_counts.count(texts)

    # -- packing --------------------------------------------------------------------------------
    @staticmethod
    def _added_cost(sec: _Section, last: _Unit | None, u: _Unit) -> tuple[int, int]:
        """(tokens, chars) that appending unit u after unit `last` (None: chunk empty) adds."""
        if last is not None and last.block == u.block and not u.new_piece:
            return u.tokens, u.end - last.end
        b = sec.blocks[u.block]
        return b.wrap_tokens + u.tokens, (0 if last is None else 2) + b.wrap_chars + u.end - u.start

    def _cost(self, sec: _Section, units: list[_Unit]) -> tuple[int, int]:
        """(tokens, chars) of a continuation chunk made of these units."""
        t, c, last = sec.prefix_tokens, sec.prefix_chars, None
        for u in units:
            dt, dc = self._added_cost(sec, last, u)
            t, c, last = t + dt, c + dc, u
        return t, c

    def _pack(self, sec: _Section, units: list[_Unit]) -> list[str]:
        s = self.settings
        chunks: list[str] = []
        current: list[_Unit] = []
        tokens = chars = 0
        continuation = False
        for u in units:
            dt, dc = self._added_cost(sec, current[-1] if current else None, u)
            if current and (tokens + dt > s.max_tokens or chars + dc > s.max_chars):
                chunks.append(self._render(sec, current, continuation))
                continuation = True
                current = self._overlap(sec, current, u) if s.overlap_tokens else []
                tokens, chars = self._cost(sec, current)
                dt, dc = self._added_cost(sec, current[-1] if current else None, u)
            current.append(u)
            tokens, chars = tokens + dt, chars + dc
        if current:
            chunks.append(self._render(sec, current, continuation))
        return chunks

    def _overlap(self, sec: _Section, previous: list[_Unit], nxt: _Unit) -> list[_Unit]:
        """Trailing whole units (or sentences) of the previous chunk, within overlap_tokens and the budget."""
        s = self.settings
        base_t, _ = self._cost(sec, [nxt])
        chosen: list[_Unit] = []

        def fits(candidate: list[_Unit]) -> bool:
            t, c = self._cost(sec, candidate + [nxt])
            return t - base_t <= s.overlap_tokens and t <= s.max_tokens and c <= s.max_chars

        for u in reversed(previous[-64:]):
            b = sec.blocks[u.block]
            if b.kind == "heading":
                break
            if fits([u] + chosen):
                chosen.insert(0, u)
                continue
            if b.kind in ("prose", "list"):
                for sentence in reversed(self._tail_sentences(b, u)):
                    if not fits([sentence] + chosen):
                        break
                    chosen.insert(0, sentence)
            break
        return chosen

    def _tail_sentences(self, b: _Block, u: _Unit) -> list[_Unit]:
        """The last few sentences of a unit, counted (only they can fit in an overlap)."""
        max_chars = self.settings.overlap_tokens * 12  # more text than this is (nearly) never that few tokens
        search_from = max(u.start, u.end - max_chars)
        # the first sentence found is the unit's first one, or starts before search_from: not a tail
        spans = _sentence_spans(b.text, search_from, u.end)[1:][-4:]
        if not spans:
            return []
        counts = self._count([b.text[a:e] for a, e in spans])
        return [_Unit(u.block, a, e, n) for (a, e), n in zip(spans, counts)]

    def _render(self, sec: _Section, units: list[_Unit], continuation: bool) -> str:
        pieces: list[str] = []
        run_start = 0
        for i, u in enumerate(units):
            last = i + 1 == len(units) or units[i + 1].block != u.block or units[i + 1].new_piece
            if not last:
                continue
            b = sec.blocks[u.block]
            body = b.text[units[run_start].start : u.end]
            if b.head:
                body = f"{b.head}\n{body}\n{b.foot}" if b.foot else f"{b.head}\n{body}"
            pieces.append(body)
            run_start = i + 1
        text = "\n\n".join(pieces)
        return f"{sec.prefix}\n\n{text}" if continuation and sec.prefix else text
