"""What the consent app tells the apps above it, without importing them.

`sharing_ended` is sent (after commit) when a consent is revoked or a member blocks sharing, with
`member_ids` and `partner_id` (None: every partner). Exports listen, to withdraw files already written that
hold those members (docs/consent.md). A consent that merely expires sends nothing: the checks at every chunk,
finalize and download catch it.
"""

from django.dispatch import Signal

sharing_ended = Signal()
