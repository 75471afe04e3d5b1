"""Invoices and payments. Behind carnet.phi."""
