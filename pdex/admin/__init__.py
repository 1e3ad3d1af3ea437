"""Admin for the pdex app, one module per concern, and the dashboard every app adds panels to."""

from django.contrib import admin
from oauth2_provider.models import Grant, IDToken, RefreshToken

from pdex.admin import dashboard, jobs, members, partners, writers  # noqa: F401 - registers the ModelAdmins and panels

# Authorization-code grants, OpenID Connect ID tokens and refresh tokens never exist here (SMART Backend
# Services: client credentials only, no refresh): their pages would only ever be empty.
for unused in (Grant, IDToken, RefreshToken):
    if admin.site.is_registered(unused):
        admin.site.unregister(unused)
