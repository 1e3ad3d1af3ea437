"""Admins see every consent, what the decision says about it today and its history; they record consents
received out of band, revoke (asked to confirm, with a reason), and block or unblock a member's sharing.
Nothing here is ever deleted."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import HttpResponseRedirect
from django.utils import timezone
from django.utils.html import format_html

from consent import services
from consent.decision import REPRESENTATIVE_ROLES
from consent.models import Consent, ConsentEvent, MemberBlock
from consent.staff import StaffConsent
from pdex.admin import charts
from pdex.admin.common import fhir_json, seconds
from pdex.admin.confirm import confirmed_action
from pdex.adminsite import Panel, register
from pdex.models import Member, Partner


class PeriodFilter(admin.SimpleListFilter):
    title = "period"
    parameter_name = "period"

    def lookups(self, request, model_admin):
        return [("current", "valid today"), ("expired", "ended"), ("future", "not started")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        today = timezone.now().date()
        if self.value() == "current":
            return queryset.filter(period_start__lte=today, period_end__gte=today)
        if self.value() == "expired":
            return queryset.filter(period_end__lt=today)
        if self.value() == "future":
            return queryset.filter(period_start__gt=today)
        return queryset


MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
ROLE_CHOICES = [("", "— the member signed —")] + [(code, code) for _, code in sorted(REPRESENTATIVE_ROLES)]


class MemberField(forms.CharField):
    """A member by UMB or Patient id, as staff read it off the form or the member line."""

    def clean(self, value):
        value = super().clean(value).strip().removeprefix("Patient/")
        member = Member.objects.filter(Q(umb=value) | Q(fhir_id=value)).first()
        if member is None:
            raise forms.ValidationError("No member with this UMB or Patient id.")
        return member


class StaffConsentForm(forms.ModelForm):
    """A consent received out of band: the same HRex Consent a partner sends, judged by the same decision."""

    member_ref = MemberField(label="member", help_text="UMB or Patient id")
    partner_ref = forms.ModelChoiceField(Partner.objects.order_by("name"), label="partner (the recipient)")
    policy_choice = forms.ChoiceField(label="policy", choices=[("sensitive", Consent.Policy.SENSITIVE.label),
                                                               ("regular", Consent.Policy.REGULAR.label)])
    start = forms.DateField(help_text="YYYY-MM-DD")
    end = forms.DateField(help_text="YYYY-MM-DD (inclusive)")
    representative_name = forms.CharField(required=False, max_length=200,
                                          help_text="if someone signed for the member")
    representative_relationship = forms.CharField(required=False, max_length=16,
                                                  help_text="v3-RoleCode relationship, e.g. DAU, SPS, MTH")
    representative_role = forms.ChoiceField(required=False, choices=ROLE_CHOICES,
                                            help_text="the authority under which the representative signed")
    document_file = forms.FileField(required=False, label="document (scan)")
    document_reference = forms.CharField(required=False, max_length=500,
                                         help_text="or where it is kept: a DocumentReference or a URL")

    class Meta:
        model = Consent
        fields: list[str] = []

    def clean(self):
        data = super().clean()
        if not data.get("document_file") and not data.get("document_reference"):
            raise forms.ValidationError("Attach the document the consent came on, or say where it is kept.")
        upload = data.get("document_file")
        if upload is not None and upload.size > MAX_DOCUMENT_BYTES:
            raise forms.ValidationError(f"The document is larger than {MAX_DOCUMENT_BYTES // 2**20} MB.")
        if data.get("representative_name") and not data.get("representative_role"):
            raise forms.ValidationError("A representative signs under a role (a power of attorney or guardianship).")
        if self.errors:
            return data
        member, partner = data["member_ref"], data["partner_ref"]
        document = None
        if upload is not None:
            document = services.UploadedDocument(filename=upload.name, content_type=upload.content_type or
                                                 "application/octet-stream", data=upload.read())
        self.staff = StaffConsent(
            patient_id=member.fhir_id, recipient_npi=partner.npi, policy=data["policy_choice"], start=data["start"],
            end=data["end"], representative_name=data.get("representative_name", ""),
            representative_relationship=data.get("representative_relationship", ""),
            representative_role=data.get("representative_role", ""),
            document_reference=data.get("document_reference", ""))
        self.document = document
        return data


class ConsentEventInline(admin.TabularInline):
    model = ConsentEvent
    fields = ("at", "action", "actor", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "history"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def _revoke(request, queryset: QuerySet, reason: str) -> int:
    count = 0
    for consent in queryset.select_related("member", "partner").exclude(status=Consent.Status.REVOKED):
        services.revoke(consent, reason, actor=str(request.user), request=request)
        count += 1
    return count


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    list_display = ("id", "member_umb", "partner", "policy_code", "status", "period_start", "period_end",
                    "decision_now", "submitted")
    list_filter = ("status", "policy", "partner", PeriodFilter, "submitted_via")
    search_fields = ("member__umb", "member__fhir_id", "partner__name", "partner__npi")
    list_select_related = ("member", "partner")
    readonly_fields = ("member", "partner", "policy", "policy_uri", "period_start", "period_end", "status",
                       "decision_today", "representative", "representative_role", "submitted_via", "recorded_by",
                       "document_info", "submitted_at", "updated_at", "revoked_at", "revoked_by", "revoked_reason",
                       "resource_json")
    exclude = ("resource", "document")
    inlines = [ConsentEventInline]
    actions = [confirmed_action(name="revoke_selected", description="Revoke the selected consents", verb="revoked",
                                perform=_revoke)]
    add_fieldsets = [
        (None, {"fields": ("member_ref", "partner_ref", "policy_choice", "start", "end")}),
        ("Signed by a representative", {"fields": ("representative_name", "representative_relationship",
                                                    "representative_role")}),
        ("The document it came on", {"fields": ("document_file", "document_reference")}),
    ]

    @admin.display(description="member", ordering="member__umb")
    def member_umb(self, consent: Consent) -> str:
        return consent.member.umb

    @admin.display(description="submitted", ordering="submitted_at")
    def submitted(self, consent: Consent) -> str:
        return f"{seconds(consent.submitted_at)} ({consent.submitted_via})"

    @admin.display(description="Consent (FHIR JSON)")
    def resource_json(self, consent: Consent) -> str:
        return fhir_json(consent.resource, "Consent as submitted")

    @admin.display(description="document")
    def document_info(self, consent: Consent) -> str:
        if consent.document is not None:
            return f"{consent.document} sha1 {consent.document.sha1}, uploaded by {consent.document.uploaded_by}"
        return (consent.resource or {}).get("sourceReference", {}).get("reference", "–")

    @admin.display(description="policy", ordering="policy")
    def policy_code(self, consent: Consent) -> str:
        return f"#{consent.policy}" if consent.policy != Consent.Policy.UNKNOWN else "unknown"

    def get_queryset(self, request):
        """Each row knows whether a block is in force against it, so "decision today" costs no query a row."""
        blocks = MemberBlock.objects.filter(member_id=OuterRef("member_id"), lifted_at__isnull=True).filter(
            Q(partner__isnull=True) | Q(partner_id=OuterRef("partner_id")))
        return super().get_queryset(request).annotate(blocked_now=Exists(blocks))

    def _decision(self, consent: Consent):
        return services.decide_for_partner(services.facts_of(consent), consent.partner,
                                           blocked=getattr(consent, "blocked_now", False))

    @admin.display(description="decision today")
    def decision_now(self, consent: Consent) -> str:
        decision = self._decision(consent)
        return format_html('<span title="{}">{}</span>', decision.reason, decision.kind)

    @admin.display(description="decision today")
    def decision_today(self, consent: Consent) -> str:
        return services.decision_text(self._decision(consent))

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = StaffConsentForm
            kwargs["fields"] = [f for _, options in self.add_fieldsets for f in options["fields"]]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def save_model(self, request, obj: Consent, form, change: bool) -> None:
        """Adding records through the service (judged, audited, with its history); nothing else is saved here."""
        if change:
            return
        try:
            consent = services.record_staff_consent(form.cleaned_data["member_ref"], form.cleaned_data["partner_ref"],
                                                    form.staff, actor=str(request.user), document=form.document,
                                                    request=request)
        except services.ConsentRefused as refused:
            raise ConsentNotUsable(str(refused.decision.reason)) from refused
        obj.__dict__.update({k: v for k, v in consent.__dict__.items() if not k.startswith("_")})
        obj._state = consent._state

    def add_view(self, request, form_url="", extra_context=None):
        try:
            return super().add_view(request, form_url, extra_context)
        except ConsentNotUsable as refused:
            self.message_user(request, f"Not recorded: this consent cannot be complied with ({refused}).",
                              messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def has_add_permission(self, request) -> bool:
        return self.has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the row and its history are the record


class ConsentNotUsable(Exception):
    """The decision refused a consent staff entered (the reason is shown to them)."""


class ActiveFilter(admin.SimpleListFilter):
    title = "in force"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "in force"), ("no", "lifted")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(lifted_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(lifted_at__isnull=False)
        return queryset


class MemberBlockForm(forms.ModelForm):
    member_ref = MemberField(label="member", help_text="UMB or Patient id")

    class Meta:
        model = MemberBlock
        fields = ["partner", "reason"]
        help_texts = {"partner": "empty: the member's data goes to no payer at all"}


def _lift(request, queryset: QuerySet, reason: str) -> int:
    return sum(services.lift_block(block, reason, actor=str(request.user), request=request) for block in queryset)


@admin.register(MemberBlock)
class MemberBlockAdmin(admin.ModelAdmin):
    """A member's own restriction (spec §3.3 item 5): set here, lifted here, never deleted; both audited."""

    list_display = ("id", "member", "scope", "in_force", "created_by", "created_at", "lifted_by", "lifted_at")
    list_filter = (ActiveFilter, "partner")
    search_fields = ("member__umb", "member__fhir_id", "partner__name")
    list_select_related = ("member", "partner")
    readonly_fields = ("member", "partner", "reason", "created_by", "created_at", "lifted_at", "lifted_by",
                       "lifted_reason")
    actions = [confirmed_action(name="lift_selected", description="Lift the selected blocks", verb="lifted",
                                perform=_lift)]

    @admin.display(description="with", ordering="partner__name")
    def scope(self, block: MemberBlock) -> str:
        return str(block.partner) if block.partner else "every payer"

    @admin.display(description="in force", boolean=True)
    def in_force(self, block: MemberBlock) -> bool:
        return block.active

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = MemberBlockForm
            kwargs["fields"] = ["member_ref", "partner", "reason"]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["member_ref", "partner", "reason"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def save_model(self, request, obj: MemberBlock, form, change: bool) -> None:
        if change:
            return
        block = services.block_member(form.cleaned_data["member_ref"], form.cleaned_data["partner"],
                                      form.cleaned_data["reason"], actor=str(request.user), request=request)
        obj.__dict__.update({k: v for k, v in block.__dict__.items() if not k.startswith("_")})
        obj._state = block._state

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@register
def consent_panels(request) -> list[Panel]:
    today = timezone.now().date()
    counts = dict(Consent.objects.values_list("status").annotate(n=Count("id")))
    ended = Consent.objects.filter(status=Consent.Status.ACTIVE, period_end__lt=today).count()
    rows = [("active, in period", counts.get(Consent.Status.ACTIVE, 0) - ended), ("active, period ended", ended),
            ("revoked", counts.get(Consent.Status.REVOKED, 0)), ("rejected", counts.get(Consent.Status.REJECTED, 0))]
    return [Panel("Consents by status", charts.horizontal_bars(
        [(label, n, f"{n:,}") for label, n in rows], title="consents by status", bar_colour="#009E73"),
        note="one consent per member and partner", order=50)]
