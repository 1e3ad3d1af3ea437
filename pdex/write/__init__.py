"""Writes into the member data store by our own systems (never partners): pdex.write.access, .bundle, .views."""
