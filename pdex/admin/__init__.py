"""Admin for the pdex app, one module per concern."""

from pdex.admin import jobs, members, partners  # noqa: F401 - registers the ModelAdmins
