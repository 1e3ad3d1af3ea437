"""RFC 7591 dynamic client registration, the partner commands and the partner admin."""

from __future__ import annotations

import json
import time
import warnings
from io import StringIO
from urllib.parse import urlencode

import pytest
from django.contrib.admin.sites import site as admin_site
from django.core.management import call_command
from django.urls import include, path
from joserfc import jwt
from joserfc.jwk import import_key
from oauth2_provider.models import AccessToken

from pdex import partners
from pdex.auth import client as smart_client
from pdex.auth.discovery import token_endpoint_url
from pdex.models import AuditEvent, Partner, TrustAnchor
from tests.fixtures.smart import new_client_key

urlpatterns = [path("admin/", admin_site.urls), path("", include("pdex.urls"))]
pytestmark = pytest.mark.urls(__name__)

SCOPE = "system/*.read http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match"


@pytest.fixture(scope="module")
def client_key():
    return new_client_key("ES384")


@pytest.fixture(scope="module")
def anchor_key():
    return new_client_key("RS384")


@pytest.fixture
def trust_anchor(db, anchor_key):
    return TrustAnchor.objects.create(name="Payer Trust Network", jwks=anchor_key[1])


def metadata(client_key, **changes):
    body = {"client_name": "New Plan Health", "jwks": client_key[1], "scope": SCOPE,
            "token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"],
            "contacts": ["mailto-less", "interop@newplan.example.com"]}
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def statement(anchor_private, claims=None, *, now=None, lifetime=600, kid=None):
    now = int(time.time()) if now is None else now
    body = {"iss": "https://trust.example.org", "sub": "new-plan-software", "iat": now, "exp": now + lifetime,
            "client_name": "New Plan Health (certified)", "npi": "1999999984"}
    body.update(claims or {})
    return jwt.encode({"alg": "RS384", "kid": kid or anchor_private["kid"]}, body, import_key(anchor_private),
                      algorithms=["RS384"])


def register(client, body):
    return client.post("/oauth/register", json.dumps(body), content_type="application/json")


def get_token(client, partner, private_jwk, scope="system/Patient.rs"):
    assertion = smart_client.make_client_assertion(private_jwk, partner.client_id, token_endpoint_url())
    return client.post("/oauth/token", urlencode(smart_client.token_form(assertion, scope)),
                       content_type="application/x-www-form-urlencoded")


def assert_registration_refused(response, error):
    assert response.status_code == 400, response.content
    assert response.json()["error"] == error
    assert response.json()["error_description"]
    assert not Partner.objects.exists()
    assert AuditEvent.objects.filter(action="register", outcome=AuditEvent.Outcome.MINOR_FAILURE,
                                     reason=error).exists()


def test_registration_without_statement_is_pending_until_approved(client, db, client_key):
    response = register(client, metadata(client_key))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["client_id"] and isinstance(body["client_id_issued_at"], int)
    assert body["token_endpoint_auth_method"] == "private_key_jwt"
    assert body["jwks"] == client_key[1] and body["scope"] == SCOPE
    assert body["grant_types"] == ["client_credentials"]
    partner = Partner.objects.get(application__client_id=body["client_id"])
    assert partner.status == Partner.Status.PENDING and partner.registered_via == "dcr"
    assert partner.contact_email == "interop@newplan.example.com"
    assert get_token(client, partner, client_key[0]).json()["error"] == "invalid_client"

    partners.approve(partner, actor="admin@old-plan")
    response = get_token(client, partner, client_key[0])
    assert response.status_code == 200, response.content
    assert AuditEvent.objects.filter(action="register", partner=partner, outcome=AuditEvent.Outcome.SUCCESS).exists()


def test_statement_signed_by_trust_anchor_makes_partner_active_at_once(client, trust_anchor, anchor_key, client_key):
    signed = statement(anchor_key[0])
    response = register(client, metadata(client_key, software_statement=signed))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["client_name"] == "New Plan Health (certified)"  # the statement's claims win (RFC 7591 §2.3)
    assert body["software_statement"] == signed
    partner = Partner.objects.get(application__client_id=body["client_id"])
    assert partner.status == Partner.Status.ACTIVE and partner.npi == "1999999984"
    assert partner.software_statement == signed
    assert get_token(client, partner, client_key[0]).status_code == 200


def test_statement_may_carry_the_keys_and_scopes(client, trust_anchor, anchor_key, client_key):
    signed = statement(anchor_key[0], {"jwks": client_key[1], "scope": "system/Group.rs",
                                       "token_endpoint_auth_method": "private_key_jwt"})
    response = register(client, {"software_statement": signed})
    assert response.status_code == 201, response.content
    assert response.json()["scope"] == "system/Group.rs"


@pytest.mark.parametrize("tamper", ["signature", "expired", "alg-none", "garbage", "not-a-string"])
def test_bad_statement_is_invalid_software_statement(client, trust_anchor, anchor_key, client_key, tamper):
    signed = statement(anchor_key[0])
    if tamper == "signature":
        head, _, signature = signed.split(".")
        other = statement(anchor_key[0], {"client_name": "Someone Else"}).split(".")[1]
        signed = f"{head}.{other}.{signature}"
    elif tamper == "expired":
        signed = statement(anchor_key[0], now=int(time.time()) - 7200, lifetime=600)
    elif tamper == "alg-none":
        head, payload, _ = signed.split(".")
        signed = f"eyJhbGciOiJub25lIn0.{payload}."  # {"alg":"none"}
    elif tamper == "garbage":
        signed = "definitely.not.a-jwt"
    else:
        signed = {"iss": "me"}
    assert_registration_refused(register(client, metadata(client_key, software_statement=signed)),
                                "invalid_software_statement")


def test_statement_from_an_untrusted_signer_is_unapproved(client, trust_anchor, client_key):
    stranger, _ = new_client_key("RS384")
    assert_registration_refused(register(client, metadata(client_key, software_statement=statement(stranger))),
                                "unapproved_software_statement")


def test_statement_from_an_inactive_anchor_is_unapproved(client, trust_anchor, anchor_key, client_key):
    trust_anchor.active = False
    trust_anchor.save()
    body = metadata(client_key, software_statement=statement(anchor_key[0]))
    assert_registration_refused(register(client, body), "unapproved_software_statement")


@pytest.mark.parametrize("changes", [
    {"client_name": None},
    {"token_endpoint_auth_method": None},
    {"token_endpoint_auth_method": "client_secret_basic"},
    {"grant_types": ["authorization_code"]},
    {"jwks": None},
    {"jwks_uri": "https://newplan.example.com/jwks.json"},
    {"jwks": None, "jwks_uri": "http://newplan.example.com/jwks.json"},
    {"jwks": None, "jwks_uri": "https://169.254.169.254/latest/meta-data"},
    {"jwks": None, "jwks_uri": "https://localhost/jwks.json"},
    {"jwks": {"keys": []}},
    {"scope": "launch openid"},
    {"scope": None},
    {"npi": "12"},
], ids=["no-name", "no-auth-method", "secret-auth", "code-grant", "no-keys", "jwks-and-uri", "http-uri",
        "metadata-ip-uri", "localhost-uri", "empty-jwks", "unknown-scopes", "no-scope", "bad-npi"])
def test_bad_metadata_is_invalid_client_metadata(client, db, client_key, settings, changes):
    settings.JWKS_ALLOW_HTTP = False  # the production rule, whatever DEBUG the shell running the tests sets
    assert_registration_refused(register(client, metadata(client_key, **changes)), "invalid_client_metadata")


def test_private_key_in_jwks_is_refused(client, db, client_key):
    body = metadata(client_key, jwks={"keys": [client_key[0]]})
    assert_registration_refused(register(client, body), "invalid_client_metadata")


def test_weak_or_wrong_curve_keys_are_refused(client, db, client_key):
    from joserfc.jwk import ECKey, RSAKey

    p256 = ECKey.generate_key("P-256").as_dict(private=False) | {"kid": "p256"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns about the small key we make on purpose
        rsa1024 = RSAKey.generate_key(1024).as_dict(private=False) | {"kid": "small"}
    for key in (p256, rsa1024):
        body = metadata(client_key, jwks={"keys": [key]})
        assert_registration_refused(register(client, body), "invalid_client_metadata")


def test_body_that_is_not_json_is_refused(client, db):
    response = client.post("/oauth/register", "client_name=x", content_type="application/x-www-form-urlencoded")
    assert_registration_refused(response, "invalid_client_metadata")


def test_jwks_uri_registration_is_stored(client, db, client_key):
    body = metadata(client_key, jwks=None, jwks_uri="https://newplan.example.com/.well-known/jwks.json")
    response = register(client, body)
    assert response.status_code == 201, response.content
    assert response.json()["jwks_uri"] == "https://newplan.example.com/.well-known/jwks.json"
    assert Partner.objects.get().jwks_url == "https://newplan.example.com/.well-known/jwks.json"


# --- commands ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_make_client_keys_then_create_partner_then_token(client, db, tmp_path, alg):
    call_command("make_client_keys", "--alg", alg, "--out", str(tmp_path), stdout=StringIO())
    private = json.loads((tmp_path / "private_jwk.json").read_text())
    public = json.loads((tmp_path / "jwks.json").read_text())
    assert (tmp_path / "private_jwk.json").stat().st_mode & 0o077 == 0
    assert private["alg"] == alg and "d" in private
    assert "d" not in public["keys"][0] and public["keys"][0]["kid"] == private["kid"]

    out = StringIO()
    call_command("create_partner", "--name", "Command Plan", "--jwks", str(tmp_path / "jwks.json"),
                 "--scope", "system/*.read", "system/Group.rs", "--npi", "1999999984", stdout=out)
    client_id = out.getvalue().strip().splitlines()[-1]
    partner = Partner.objects.get(application__client_id=client_id)
    assert partner.is_active and partner.allowed_scopes == "system/*.read system/Group.rs"
    assert get_token(client, partner, private).status_code == 200


def test_create_partner_refuses_a_private_jwks(db, tmp_path):
    private, _ = new_client_key("ES384")
    (tmp_path / "leak.json").write_text(json.dumps({"keys": [private]}))
    with pytest.raises(Exception, match="public keys only"):
        call_command("create_partner", "--name", "Leaky Plan", "--jwks", str(tmp_path / "leak.json"),
                     stdout=StringIO())
    assert not Partner.objects.exists()


# --- admin ---------------------------------------------------------------------------------------------

@pytest.fixture
def staff(admin_client):
    return admin_client


def test_admin_approve_and_suspend_actions(staff, client, db, client_key):
    partner = partners.create_partner(name="Admin Plan", jwks=client_key[1], scope="system/*.read")
    AccessToken.objects.all().delete()
    url = "/admin/pdex/partner/"
    assert staff.post(url, {"action": "approve_partners", "_selected_action": [partner.pk]}).status_code == 302
    partner.refresh_from_db()
    assert partner.is_active
    assert get_token(client, partner, client_key[0]).status_code == 200
    assert staff.post(url, {"action": "suspend_partners", "_selected_action": [partner.pk]}).status_code == 302
    partner.refresh_from_db()
    assert partner.status == Partner.Status.SUSPENDED
    assert not AccessToken.objects.filter(application=partner.application).exists()
    assert set(AuditEvent.objects.filter(partner=partner).values_list("action", flat=True)) >= {
        "partner-create", "partner-approve", "partner-suspend", "token"}


def test_admin_pages_show_partner_history_and_audit(staff, db, client_key):
    partner = partners.create_partner(name="Shown Plan", jwks=client_key[1], scope="system/*.read")
    page = staff.get(f"/admin/pdex/partner/{partner.pk}/change/")
    assert page.status_code == 200
    assert partner.client_id in page.content.decode() and "partner-create" in page.content.decode()
    assert staff.get("/admin/pdex/partner/").status_code == 200
    assert staff.get("/admin/pdex/partner/add/").status_code == 200
    assert staff.get("/admin/pdex/trustanchor/add/").status_code == 200
    audit_list = staff.get(f"/admin/pdex/auditevent/?partner__id__exact={partner.pk}")
    assert audit_list.status_code == 200 and "partner-create" in audit_list.content.decode()
    assert staff.get("/admin/pdex/auditevent/add/").status_code == 403


def test_admin_add_partner_creates_its_oauth_client(staff, db, client_key):
    response = staff.post("/admin/pdex/partner/add/", {
        "name": "Added Plan", "npi": "", "payer_id": "", "allowed_scopes": "system/*.read",
        "jwks": json.dumps(client_key[1]), "jwks_url": "", "agreement_date": "", "contact_name": "",
        "contact_email": "",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    partner = Partner.objects.get(name="Added Plan")
    assert partner.client_id and partner.status == Partner.Status.PENDING


def test_admin_refuses_a_private_key(staff, db, client_key):
    response = staff.post("/admin/pdex/partner/add/", {
        "name": "Leaky Plan", "allowed_scopes": "system/*.read", "jwks": json.dumps({"keys": [client_key[0]]}),
    })
    assert response.status_code == 200 and "public keys only" in response.content.decode()
    assert not Partner.objects.exists()
