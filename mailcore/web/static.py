"""Static files served by the application itself (whitenoise), so production needs no separate web server."""

from __future__ import annotations

from django.conf import settings
from django.contrib.staticfiles.finders import get_finders
from whitenoise import WhiteNoise

# Our file names carry no content hash, so browsers revalidate after an hour at most.
STATIC_MAX_AGE = 3600


def with_static_files(application):
    """Wrap a WSGI application so that it answers STATIC_URL from the same places `collectstatic` reads.

    Files are indexed from the static finders at start, as `collectstatic` would copy them, so
    no build step or writable STATIC_ROOT is needed; a STATIC_ROOT that an operator filled with
    `collectstatic` is served too, and wins.
    """
    static = WhiteNoise(application, max_age=STATIC_MAX_AGE)
    locations = []
    for finder in get_finders():
        for storage in getattr(finder, "storages", {}).values():
            location = getattr(storage, "location", None)
            if location and location not in locations:
                locations.append(location)
    # Django's finders give the first match; whitenoise keeps the last one added: add in reverse.
    for location in reversed(locations):
        static.add_files(location, prefix=settings.STATIC_URL)
    if settings.STATIC_ROOT and settings.STATIC_ROOT.is_dir():
        static.add_files(str(settings.STATIC_ROOT), prefix=settings.STATIC_URL)
    return static
