"""Admin for internal clients: our own systems that write into the store (pdex.write.access).

An admin registers them here (never by dynamic registration) and issues their bearer tokens with an action; the
token is shown once, in the message, and is audited.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet

from pdex.extract import SOURCE_FORMATS
from pdex.models import InternalClient
from pdex.write import access


class InternalClientForm(forms.ModelForm):
    source_format = forms.ChoiceField(choices=[("", "unknown"), *SOURCE_FORMATS.items()], required=False)

    class Meta:
        model = InternalClient
        fields = ["name", "allowed_scopes", "source_format", "active"]

    def clean_allowed_scopes(self):
        cleaned = access.clean_write_scopes(self.cleaned_data.get("allowed_scopes") or "")
        if not cleaned:
            raise forms.ValidationError("Give at least one write scope, e.g. system/*.write or system/Claim.cud.")
        return cleaned


@admin.register(InternalClient)
class InternalClientAdmin(admin.ModelAdmin):
    form = InternalClientForm
    list_display = ["name", "allowed_scopes", "source_format", "active", "created_at"]
    actions = ["issue_token"]

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = access.register_internal_client(obj.name, scope=obj.allowed_scopes, source_format=obj.source_format,
                                                  actor=request.user.get_username(), request=request)
        obj.pk, obj.application_id = created.pk, created.application_id

    @admin.action(description="Issue a bearer token (shown once)")
    def issue_token(self, request, queryset: QuerySet[InternalClient]) -> None:
        for client in queryset:
            if not client.active:
                self.message_user(request, f"{client.name} is not active.", messages.WARNING)
                continue
            token = access.issue_token(client, request=request)
            self.message_user(request, f"Token for {client.name} (expires {token.expires:%Y-%m-%d}): {token.token}",
                              messages.SUCCESS)
