"""Admin actions that change what a partner may receive ask first, and record who and why.

Django's own confirmation page exists only for delete; this is the same two steps for revoke, cancel and
lift: the action renders the selected rows with a required reason, and only the confirmed POST acts.
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

CONFIRM_FIELD = "confirmed"


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=2000, strip=True,
                             help_text="Recorded with your name in the audit trail.")


def confirmed_action(*, name: str, description: str, verb: str,
                     perform: Callable[[HttpRequest, QuerySet, str], int]) -> Callable:
    """An admin action: first a confirmation page asking why, then `perform(request, queryset, reason)`, which
    returns how many rows it changed."""

    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet):
        form = ReasonForm(request.POST if request.POST.get(CONFIRM_FIELD) else None)
        if form.is_bound and form.is_valid():
            done = perform(request, queryset, form.cleaned_data["reason"])
            modeladmin.message_user(request, f"{done} {modeladmin.opts.verbose_name_plural} {verb}.",
                                    messages.SUCCESS)
            return None
        opts = modeladmin.model._meta
        context = {
            **modeladmin.admin_site.each_context(request), "title": f"{description}?", "opts": opts,
            "queryset": queryset, "form": form, "verb": verb, "action_name": request.POST.get("action", ""),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME, "confirm_field": CONFIRM_FIELD,
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/pdex/confirm_action.html", context)

    action.__name__ = name
    return admin.action(description=description)(action)
