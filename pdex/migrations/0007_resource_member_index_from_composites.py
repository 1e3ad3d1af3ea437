"""Drop the member-only index of pdex_resource: the (member, resource_type, …) indexes lead with member_id and
serve every lookup by member, and beside them the planner chose the member-only index for "these members' rows
of one type", filtering out the other types row by row (a third of an export chunk's time, docs/exports.md).

Only the index goes: the foreign key stays as it is (Django's own AlterField would drop and re-validate it, and
drop every other index on the column, the partial `resource_pa_documents` of exports among them).
"""

import django.db.models.deletion
from django.db import migrations, models

INDEX = "pdex_resource_member_id_d2815df1"  # Django's name for the foreign key's index (table, column, hash)


class Migration(migrations.Migration):

    dependencies = [
        ("pdex", "0006_partner_match_failure_budget"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f'DROP INDEX IF EXISTS "{INDEX}"',
                                  f'CREATE INDEX IF NOT EXISTS "{INDEX}" ON pdex_resource (member_id)'),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="resource",
                    name="member",
                    field=models.ForeignKey(blank=True, db_index=False,
                                            help_text="empty for shared resources (Organization, Practitioner, …)",
                                            null=True, on_delete=django.db.models.deletion.CASCADE,
                                            related_name="resources", to="pdex.member"),
                ),
            ],
        ),
    ]
