from django.apps import AppConfig

from pdex.jobs import kinds
from requesting.kind import PULL


class RequestingConfig(AppConfig):
    name = "requesting"
    verbose_name = "Requesting side: previous payers, consents we collect, pulls"

    def ready(self) -> None:
        """Tell the job engine what a pull is (it runs and sweeps it; the status URL never serves it)."""
        kinds.register(PULL)
