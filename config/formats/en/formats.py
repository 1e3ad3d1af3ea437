"""Times to the second, ISO-style, wherever Django formats one (the admin's lists and records above all):
an audit trail read in minutes cannot order what happened within one."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
