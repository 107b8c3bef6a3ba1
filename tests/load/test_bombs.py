"""Issue 27, item 5: decompression bombs under --max-file-mb.

What a document inflates to is bounded by what is really inflated (counted while inflating, in
bounded pieces), never by what its headers claim: a .docx whose zip directory claims 1,000 bytes for
a part that inflates to 1.5 GiB, and a PDF whose one content stream decodes to 1.5 GiB, are each the
document error `too_large`, naming the limit; the job goes on (the other documents are indexed,
exit 3) and its peak RSS stays under 800 MB. The bombs are built here, at test time, in
milliseconds: a deflate block of 1 MiB of spaces, full-flushed (so it needs no history), repeated.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import format_fixtures as F
import pytest
from test_bad_input import FAKE, run_measured

from kbingest.pipeline.load.formats import docx as docx_format
from kbingest.pipeline.load.formats import pdf as pdf_format
from kbingest.pipeline.load.formats.base import INFLATE_FLOOR, LoadError, inflation_limit

MIB = 1 << 20
RSS_CAP_KB = 800 * 1000 * 1000 // 1024  # 800 MB, as ru_maxrss (KiB)


def deflate_of(mib: int, fill: bytes = b" ", wrapped: bool = False) -> bytes:
    """A deflate stream of `mib` MiB of `fill` (raw, or zlib-wrapped as PDF's FlateDecode), ~1 KiB a MiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(fill * MIB) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, refers to nothing before it
    body = block * mib + b"\x03\x00"  # and a final empty block
    if not wrapped:
        return body
    adler = 1
    for _ in range(mib):
        adler = zlib.adler32(fill * MIB, adler)
    return b"\x78\xda" + body + struct.pack(">I", adler)


def lying_docx(mib: int, claimed: int = 1000) -> bytes:
    """A real .docx whose word/document.xml is replaced by `mib` MiB of deflated data, its zip
    directory (local header and central directory) claiming `claimed` bytes."""
    import io

    members = []
    with zipfile.ZipFile(io.BytesIO(F.docx_bytes())) as z:
        for info in z.infolist():
            if info.filename == "word/document.xml":
                members.append((info.filename, deflate_of(mib, b" "), 0, claimed))
            else:
                raw = z.read(info)
                c = zlib.compressobj(6, zlib.DEFLATED, -15)
                members.append((info.filename, c.compress(raw) + c.flush(), zlib.crc32(raw), len(raw)))
    out, central = bytearray(), bytearray()
    for name, comp, crc, size in members:
        n = name.encode()
        central += (
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                20,
                20,
                0,
                8,
                0,
                0x21,
                crc,
                len(comp),
                size,
                len(n),
                0,
                0,
                0,
                0,
                0,
                len(out),
            )
            + n
        )
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(comp), size, len(n), 0) + n
        out += comp
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


def pdf_with_stream(stream: bytes, filters: str = "/FlateDecode", extra: str = "") -> bytes:
    """A one-page PDF whose content stream is `stream` (already encoded with `filters`)."""
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter %s %s>>\nstream\n" % (len(stream), filters.encode(), extra.encode())
        + stream
        + b"\nendstream",
    ]
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def error_of(fmt, data: bytes, limit: int) -> LoadError:
    with pytest.raises(LoadError) as e:
        fmt.extract_within(data, path="x" + fmt.suffixes[0], max_inflated=limit)
    return e.value


# ---- the formats: what is really inflated is counted -----------------------------------------------


def test_docx_counts_what_a_part_really_inflates_to_not_what_the_directory_claims():
    bomb = lying_docx(80)  # claims 1,000 bytes: the directory checks see nothing wrong
    docx_format.check_archive(bomb).close()
    e = error_of(docx_format.DOCX, bomb, 64 * MIB)
    assert e.kind == "too_large" and "more than 64 MiB" in e.message and "--max-file-mb" in e.message


def test_docx_within_the_limit_still_loads():
    ex = docx_format.DOCX.extract_within(F.docx_bytes(), path="x.docx", max_inflated=64 * MIB)
    assert "Maintenance" in ex.text


def test_pdf_counts_what_a_stream_decodes_to():
    e = error_of(pdf_format.PDF, pdf_with_stream(deflate_of(80, wrapped=True)), 64 * MIB)
    assert e.kind == "too_large" and "more than 64 MiB" in e.message


@pytest.mark.parametrize(
    "filters, encode",
    [
        ("[/ASCIIHexDecode /FlateDecode]", lambda z: z.hex().encode() + b">"),
        ("[/A85 /Fl]", lambda z: __import__("base64").a85encode(z) + b"~>"),
        ("/Fl#61teDecode", lambda z: z),  # a name spelled with a #xx escape
    ],
)
def test_pdf_filter_chains_are_followed(filters, encode):
    e = error_of(pdf_format.PDF, pdf_with_stream(encode(deflate_of(80, wrapped=True)), filters), 64 * MIB)
    assert e.kind == "too_large"


def test_pdf_indirect_filter_is_resolved():
    data = pdf_with_stream(deflate_of(80, wrapped=True), "9 0 R").replace(
        b"xref", b"9 0 obj\n/FlateDecode\nendobj\nxref"
    )
    assert error_of(pdf_format.PDF, data, 64 * MIB).kind == "too_large"


def test_pdf_run_length_and_lzw_are_counted():
    rl = bytes([129, 0x20]) * (40 * MIB // 128) + b"\x80"  # 40 MiB: 128 spaces per 2 bytes (64x)
    assert pdf_format.check_decoded_size(pdf_with_stream(rl, "/RunLengthDecode"), 64 * MIB) is None
    with pytest.raises(LoadError) as e:
        pdf_format.check_decoded_size(pdf_with_stream(rl, "/RunLengthDecode"), 32 * MIB)
    assert e.value.kind == "too_large"
    # LZW: 9-bit codes 32, 258, 259, 260, ... each one longer than the one before (quadratic growth)
    codes, bits = [256, 32] + list(range(258, 258 + 250)) + [257], []
    for c in codes:
        bits.append(format(c, "09b"))
    s = "".join(bits)
    lzw = int(s + "0" * (-len(s) % 8), 2).to_bytes((len(s) + 7) // 8, "big")
    assert pdf_format.check_decoded_size(pdf_with_stream(lzw, "/LZWDecode"), 64 * MIB) is None
    with pytest.raises(LoadError):
        pdf_format.check_decoded_size(pdf_with_stream(lzw, "/LZWDecode"), 30_000)  # 1+2+...+251 = 31,626 bytes


def test_pdf_images_count_alone_not_towards_the_total():
    img = deflate_of(40, wrapped=True)
    data = pdf_with_stream(img, "/FlateDecode", "/Subtype /Image /Width 1 /Height 1 ")
    assert pdf_format.check_decoded_size(data, 64 * MIB) is None  # 40 MiB: one image within the limit


def test_ordinary_pdfs_pass_the_scan_and_load():
    for data in (F.outline_pdf(), F.many_pages_pdf(50), F.scanned_pdf()):
        assert pdf_format.check_decoded_size(data, INFLATE_FLOOR) is None
    ex = pdf_format.PDF.extract_within(F.outline_pdf(), path="x.pdf", max_inflated=INFLATE_FLOOR)
    assert ex.text.strip() and ex.page_starts


def test_the_limit_follows_max_file_mb():
    assert inflation_limit(1 * MIB) == 64 * MIB and inflation_limit(20 * MIB) == 200 * MIB
    assert inflation_limit(100 * MIB) == 1000 * MIB


# ---- the CLI: the job goes on, within 800 MB ---------------------------------------------------


def _ingest_with(tmp_path: Path, name: str, data: bytes):
    from conftest import SMALL_PAGES, copy_pages

    src = copy_pages(tmp_path / "docs", SMALL_PAGES[:2])
    (src / name).write_bytes(data)
    r = run_measured("ingest", str(src), "--kb", "bombs", "--batch", *FAKE, home=tmp_path / "h", timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr)
    m = r.final["metrics"]
    errors = {Path(e["path"]).name: e for e in m["document_errors"]}
    assert set(errors) == {name}, errors
    assert errors[name]["kind"] == "too_large", errors[name]
    assert "200 MiB" in errors[name]["message"], errors[name]
    assert m["documents_added"] == 2, m
    assert r.maxrss_kb < RSS_CAP_KB, f"peak RSS {r.maxrss_kb / 1024:.0f} MiB"
    assert "Traceback" not in r.stderr
    return r


def test_docx_lying_about_its_size_is_too_large_within_800_mb(tmp_path):
    """Issue 27 item 5: 1.6 MB of .docx, 1,000 bytes claimed, 1.5 GiB inflated."""
    _ingest_with(tmp_path, "bomb.docx", lying_docx(1536))


def test_pdf_stream_bomb_is_too_large_within_800_mb(tmp_path):
    """Issue 27 item 5: 1.6 MB of PDF whose one content stream decodes to 1.5 GiB."""
    _ingest_with(tmp_path, "bomb.pdf", pdf_with_stream(deflate_of(1536, wrapped=True)))
