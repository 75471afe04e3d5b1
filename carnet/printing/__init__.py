"""Printed documents: a prescription, an invoice, a receipt, a discharge letter as PDF.

This folder lays out what a domain operation hands it (carnet/prescriptions/printing.py,
carnet/billing/printing.py, carnet/records/printing.py, run only through the gate) and stamps
every page with who printed it, when, and the document's id, which the audit event of the print
names too. It reads no patient data itself and imports no model.
"""

from carnet.printing.document import Document, PrintedDocument, Section, Watermark, render_pdf

__all__ = ["Document", "PrintedDocument", "Section", "Watermark", "render_pdf"]
