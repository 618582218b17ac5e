from django.core.management.base import BaseCommand
from django.db import connection


class Command(BaseCommand):
    help = "Empty the posts table (before the benchmark seeds it for `list`)"

    def handle(self, **options):
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE posts_post RESTART IDENTITY")
        self.stderr.write("posts truncated")
