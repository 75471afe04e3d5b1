"""The organisation: facilities, locations, practitioners. Not patient data."""
