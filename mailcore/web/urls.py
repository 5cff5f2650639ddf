"""URL routes of the mailbox owners' self-service, under /mailbox/."""

from django.urls import path

from mailcore.web import owner

app_name = "mailbox"

urlpatterns = [
    path("", owner.home, name="home"),
    path("login/", owner.login, name="login"),
    path("logout/", owner.logout, name="logout"),
    path("message/<int:delivery_id>/", owner.message, name="message"),
    path("message/<int:delivery_id>/raw/", owner.raw, name="raw"),
    path("message/<int:delivery_id>/html/", owner.html_part, name="html"),
    path("release/<int:delivery_id>/", owner.release, name="release"),
    path("delete/<int:delivery_id>/", owner.delete, name="delete"),
    path("bulk/", owner.bulk, name="bulk"),
    path("senders/", owner.sender_list, name="senders"),
    path("senders/<int:rule_id>/remove/", owner.sender_remove, name="sender-remove"),
    path("message/<int:delivery_id>/sender/<str:action>/", owner.sender_from_message, name="sender-from-message"),
]
