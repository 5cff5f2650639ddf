"""URL routes: the administrator's console on the Django admin, the mailbox owners' self-service."""

from django.urls import include, path
from django.views.generic import RedirectView

from mailcore.admin import adopt_default_registrations, site

adopt_default_registrations()

urlpatterns = [
    path("admin/", site.urls),
    path("mailbox/", include("mailcore.web.urls")),
    path("", RedirectView.as_view(url="/mailbox/", permanent=False)),
]
