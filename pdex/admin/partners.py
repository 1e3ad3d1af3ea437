"""Admin for partners, trust anchors and the audit trail."""
