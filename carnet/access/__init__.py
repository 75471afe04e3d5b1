"""Access policy: roles, permissions, care relationships, restrictions, break-the-glass."""
