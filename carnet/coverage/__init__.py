"""Health-card and insurance coverage history; each card reading is kept. Behind carnet.phi."""
