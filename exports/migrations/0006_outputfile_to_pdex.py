"""OutputFile moved to pdex.jobs (the asynchronous-job machinery every operation shares): the exports app
forgets it here, and pdex 0002 adopts the same table under its own name."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("exports", "0005_export_job_planning_messages"),
    ]
    # The lower app must not depend on this one; we declare the order from above instead.
    run_before = [
        ("pdex", "0002_outputfile"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="OutputFile")]),
    ]
