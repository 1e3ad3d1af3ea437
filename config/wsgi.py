"""The WSGI application. Its URLconf (and so every view module) is imported here, when a web worker boots,
so that the first request a worker serves does not pay for importing ~200 modules (0.1 s); and its broker
connection is made, so that its first kick-off does not pay 72 ms for it (config.celery.warm_broker)."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
get_resolver().url_patterns  # noqa: B018 - imported for its side effect: every view module loaded now

from config.celery import warm_broker  # noqa: E402 - after Django is set up

warm_broker()
