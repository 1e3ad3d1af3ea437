"""Admin for members and their resources (read-only)."""
