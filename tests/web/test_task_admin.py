"""django-q2's schedules, tasks and queue in the admin: superusers only, and read-only even for them
(a schedule's func is any import path, run by qcluster)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django_q.models import Schedule

from tests.web_client import WebClient, start_web


def task_pages() -> list[str]:
    """The change lists of every django-q2 model in the admin: its queue (OrmQ) is there only with
    the ORM broker, so the pages depend on the broker this run uses."""
    pages = [f"/admin/django_q/{model._meta.model_name}/" for model in admin.site._registry if model._meta.app_label == "django_q"]
    assert {"/admin/django_q/schedule/", "/admin/django_q/success/", "/admin/django_q/failure/"} <= set(pages)
    return pages


@pytest.fixture
def users():
    staff = User.objects.create_user("staff", password="staff-password-1", is_staff=True)
    # Every permission there is, django-q2's add/change/delete schedule among them: staff status
    # and permissions are still not enough.
    staff.user_permissions.set(Permission.objects.all())
    User.objects.create_superuser("root", password="root-password-1")
    return Schedule.objects.create(name="sweep", func="mailcore.tasks.sweep_queue", schedule_type=Schedule.MINUTES, minutes=1)


@pytest.mark.django_db(transaction=True)
def test_staff_cannot_open_or_change_a_schedule(server_factory, users):
    schedule = users
    client = WebClient(start_web(server_factory))
    assert "Log out" in client.admin_sign_in("staff", "staff-password-1")
    for page in task_pages() + [f"/admin/django_q/schedule/{schedule.pk}/change/", "/admin/django_q/schedule/add/"]:
        assert client.request(page)[0] == 403, page
    status, _ = client.request("/admin/django_q/schedule/add/", {"name": "evil", "func": "os.system", "args": "'id'", "schedule_type": "O"})
    assert status == 403
    status, _ = client.request(f"/admin/django_q/schedule/{schedule.pk}/change/", {"name": "sweep", "func": "os.system"})
    assert status == 403
    assert "django_q" not in client.get("/admin/")  # not even listed
    assert Schedule.objects.get(pk=schedule.pk).func == "mailcore.tasks.sweep_queue"
    assert not Schedule.objects.filter(func="os.system").exists()


@pytest.mark.django_db(transaction=True)
def test_superusers_may_look_but_not_change(server_factory, users):
    schedule = users
    client = WebClient(start_web(server_factory))
    client.admin_sign_in("root", "root-password-1")
    for page in task_pages():
        assert client.request(page)[0] == 200, page
    status, page = client.request(f"/admin/django_q/schedule/{schedule.pk}/change/")
    assert status == 200 and "mailcore.tasks.sweep_queue" in page and 'name="_save"' not in page
    assert client.request("/admin/django_q/schedule/add/")[0] == 403
    status, _ = client.request(f"/admin/django_q/schedule/{schedule.pk}/change/", {"name": "sweep", "func": "os.system"})
    assert status == 403
    status, _ = client.request(f"/admin/django_q/schedule/{schedule.pk}/delete/", {"post": "yes"})
    assert status == 403
    assert Schedule.objects.get(pk=schedule.pk).func == "mailcore.tasks.sweep_queue"
    assert not Schedule.objects.filter(func="os.system").exists()
