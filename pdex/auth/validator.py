"""django-oauth-toolkit validator for SMART Backend Services (private_key_jwt client assertions)."""

from oauth2_provider.oauth2_validators import OAuth2Validator


class SmartBackendValidator(OAuth2Validator):
    """Placeholder until the authorization issue lands: refuses every client."""

    def authenticate_client(self, request, *args, **kwargs) -> bool:
        return False
