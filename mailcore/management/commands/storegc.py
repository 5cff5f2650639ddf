"""manage.py storegc [--dry-run]: remove message bodies that no message refers to."""

from mailcore.management.base import MailCommand
from mailcore.services.bodies import collect_orphans


class Command(MailCommand):
    help = (
        "Remove bodies older than MAIL_STORE_GC_GRACE that no message refers to (left by a crash "
        "between a body's fsync and its row's commit), and old temporary files."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Print what would be removed; remove nothing.")

    def handle(self, *args, dry_run=False, **options):
        result = collect_orphans(dry_run=dry_run)
        prefix = "would remove" if dry_run else "removed"
        for name in result.orphans:
            self.stdout.write(f"{prefix} orphaned body {name}")
        for name in result.temporaries:
            self.stdout.write(f"{prefix} temporary file {name}")
        self.stdout.write(f"storegc: {result.summary()}")
