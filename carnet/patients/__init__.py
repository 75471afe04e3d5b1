"""Patient identity and demographics, care relationships, restrictions. Behind carnet.phi."""
