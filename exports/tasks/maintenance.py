"""Housekeeping tasks: expire outputs past their TTL."""
