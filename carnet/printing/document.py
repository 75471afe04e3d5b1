"""A document as printed: its content (what the gate opened), its watermark, its PDF (ReportLab)."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from babel.dates import format_datetime
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from carnet.printing.words import PARIS, word

MEDIA_TYPE = "application/pdf"
FONT = "CarnetVera"
FONT_BOLD = "CarnetVera-Bold"


@dataclass(frozen=True)
class Section:
    """A heading, then paragraphs (line breaks kept) and/or a table (a header row, then rows)."""

    heading: str
    paragraphs: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    empty: str = ""  # said when there is nothing (no table then)


@dataclass(frozen=True)
class Document:
    """What a domain operation hands in: only fields the gate's decision opened."""

    kind: str  # prescription, invoice, receipt, discharge_letter
    language: str
    title: str
    facility: str
    patient: tuple[tuple[str, str], ...]  # (label, value): the patient's name, birth date
    sections: tuple[Section, ...] = ()
    signature: tuple[str, ...] = ()  # the prescriber's or attending physician's lines


@dataclass(frozen=True)
class Watermark:
    """On every page: who printed it, when, and the document id (named by the print's audit event)."""

    printed_by: str
    printed_at: dt.datetime
    document_id: str
    language: str = "fr"

    def when(self) -> str:
        locale = "fr_FR" if self.language == "fr" else "en_GB"
        return format_datetime(self.printed_at, "dd/MM/yyyy HH:mm zzz", tzinfo=PARIS, locale=locale)

    def line(self) -> str:
        return word(self.language, "printed_by").format(
            who=self.printed_by, when=self.when(), document=self.document_id
        )


@dataclass(frozen=True)
class PrintedDocument:
    """A printed document as the gate returns it: the PDF and its id (in the audit event)."""

    document_id: str
    kind: str
    filename: str
    pdf: bytes = field(repr=False)
    media_type: str = MEDIA_TYPE


def _fonts() -> None:
    # ReportLab's own Bitstream Vera (shipped in the package): embedded, accents and the euro
    # sign included, and its text extracts back (a searchable, copyable PDF).
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    pdfmetrics.registerFont(TTFont(FONT, "Vera.ttf"))
    pdfmetrics.registerFont(TTFont(FONT_BOLD, "VeraBd.ttf"))


def _text(value: str) -> str:
    """Data is text, never markup: escaped, its line breaks kept."""
    return "<br/>".join(escape(part) for part in value.split("\n"))


def render_pdf(document: Document, watermark: Watermark) -> bytes:
    _fonts()
    base = getSampleStyleSheet()
    body = ParagraphStyle("carnet-body", parent=base["BodyText"], fontName=FONT, fontSize=10, leading=13)
    small = ParagraphStyle("carnet-small", parent=body, fontSize=8, leading=10, textColor=colors.grey)
    h1 = ParagraphStyle("carnet-h1", parent=base["Heading1"], fontName=FONT_BOLD, fontSize=16)
    h2 = ParagraphStyle("carnet-h2", parent=base["Heading2"], fontName=FONT_BOLD, fontSize=12)
    cell = ParagraphStyle("carnet-cell", parent=body, fontSize=9, leading=11)

    story: list[Flowable] = [
        Paragraph(_text(document.facility), small),
        Paragraph(_text(document.title), h1),
    ]
    identity = Table(
        [[Paragraph(_text(k), body), Paragraph(_text(v), body)] for k, v in document.patient],
        colWidths=[45 * mm, 120 * mm],
        hAlign="LEFT",
    )
    identity.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [identity, Spacer(1, 4 * mm)]
    for section in document.sections:
        story.append(Paragraph(_text(section.heading), h2))
        for paragraph in section.paragraphs:
            story.append(Paragraph(_text(paragraph), body))
        if section.rows:
            rows = [[Paragraph(_text(c), cell) for c in section.header]] if section.header else []
            rows += [[Paragraph(_text(c), cell) for c in row] for row in section.rows]
            table = Table(rows, hAlign="LEFT", repeatRows=1 if section.header else 0)
            table.setStyle(
                TableStyle(
                    [
                        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                        ("VALIGN", (0, 0), (-1, -1), "TOP"),
                        *([("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke)] if section.header else []),
                    ]
                )
            )
            story.append(table)
        elif section.empty and not section.paragraphs:
            story.append(Paragraph(_text(section.empty), body))
        story.append(Spacer(1, 3 * mm))
    if document.signature:
        story += [Spacer(1, 6 * mm), *(Paragraph(_text(line), body) for line in document.signature)]

    stamp = watermark.line()

    def on_page(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        width, height = A4
        canvas.saveState()
        # Across the page, faint: a photocopy still says who printed it.
        canvas.setFillColor(colors.Color(0.6, 0.6, 0.6, alpha=0.25))
        canvas.setFont(FONT_BOLD, 14)
        canvas.translate(width / 2, height / 2)
        canvas.rotate(35)
        canvas.drawCentredString(0, 0, f"{watermark.printed_by} · {watermark.when()}")
        canvas.drawCentredString(0, -18, watermark.document_id)
        canvas.restoreState()
        canvas.saveState()
        canvas.setFont(FONT, 7)
        canvas.setFillColor(colors.black)
        page = word(document.language, "page").format(number=doc.page)
        canvas.drawString(15 * mm, 10 * mm, f"{stamp} — {page}")
        canvas.restoreState()

    out = io.BytesIO()
    pdf = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        bottomMargin=20 * mm,
        title=document.title,
        author=watermark.printed_by,
        subject=watermark.document_id,
        creator="carnet",
        lang=document.language,
    )
    pdf.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return out.getvalue()
