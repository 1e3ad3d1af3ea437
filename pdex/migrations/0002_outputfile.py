"""OutputFile joins the asynchronous-job machinery in pdex.jobs: adopt exports' table (exports 0006 runs
first and forgets the model) and rename it; no row moves."""

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("pdex", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="OutputFile",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("job_id", models.UUIDField(db_index=True, help_text="a MatchJob or an ExportJob")),
                        ("kind", models.CharField(choices=[("output", "Output"), ("error", "Error"),
                                                           ("deleted", "Deleted")], default="output", max_length=16)),
                        ("resource_type", models.CharField(max_length=64)),
                        ("storage_key", models.CharField(max_length=500, unique=True)),
                        ("count", models.PositiveIntegerField(default=0)),
                        ("size", models.BigIntegerField(default=0)),
                        ("sequence", models.PositiveIntegerField(default=0, help_text="order within the manifest")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("partner", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                                      to="pdex.partner")),
                    ],
                    options={"ordering": ["kind", "resource_type", "sequence"], "db_table": "exports_outputfile"},
                ),
            ],
        ),
        migrations.AlterModelTable(name="outputfile", table=None),
    ]
