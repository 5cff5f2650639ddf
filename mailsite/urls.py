"""URL routes: the administrator's console on the Django admin, the mailbox owners' self-service."""

from django.urls import include, path
from django.views.generic import RedirectView

from mailcore.admin import adopt_default_registrations, site
from mailcore.quarantine import views as quarantine_links

adopt_default_registrations()

urlpatterns = [
    path("admin/", site.urls),
    path("mailbox/", include("mailcore.web.urls")),
    path("quarantine/<str:action>/<str:token>/", quarantine_links.link, name="quarantine-link"),
    path("", RedirectView.as_view(url="/mailbox/", permanent=False)),
]
