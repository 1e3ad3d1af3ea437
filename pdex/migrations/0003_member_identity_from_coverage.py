"""Member identity from Coverage (pdex.identity): the member number keeps its system and the Coverage it came
from, and is no longer unique (a family card; two members swapping numbers in one reload); empty, not NULL,
when there is none."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pdex', '0002_outputfile'),
    ]

    operations = [
        migrations.AddField(
            model_name='member',
            name='identity_coverage',
            field=models.CharField(blank=True, db_default='', default='', help_text='Coverage.id the member number and subscriber id come from', max_length=64),
        ),
        migrations.AddField(
            model_name='member',
            name='member_number_system',
            field=models.TextField(blank=True, db_default='', default='', help_text='the system of that identifier, as the Coverage gives it'),
        ),
        migrations.AlterField(
            model_name='member',
            name='member_number',
            field=models.CharField(blank=True, db_default='', db_index=True, default='', help_text='Coverage member id (identifier typed MB)', max_length=64),
        ),
        migrations.AlterField(
            model_name='member',
            name='subscriber_id',
            field=models.CharField(blank=True, db_index=True, help_text='Coverage.subscriberId', max_length=64),
        ),
    ]
