"""The Django admin as the mail server's console: a dashboard index, the quarantine, message views, the queue."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from mailcore import models
from mailcore.authentication.results import summary
from mailcore.quarantine import admin as quarantine_admin
from mailcore.services import accounts, dkim_keys, pins, quarantine, queue_control
from mailcore.services.trace import trace
from mailcore.web import dashboard, message_pages
from mailcore.web.forms import AliasForm, DomainForm, MailboxChangeForm, MailboxCreationForm, MailboxPasswordForm


class MailAdminSite(admin.AdminSite):
    """The admin site whose index is the mail dashboard."""

    site_header = "Mail server"
    site_title = "Mail server"
    index_title = "Dashboard"
    index_template = "admin/mail_dashboard.html"
    # The console's own navigation bar (templates/admin/base_site.html) replaces the model sidebar,
    # which would squeeze the wide quarantine and queue lists.
    enable_nav_sidebar = False

    def index(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), **dashboard.context()}
        extra_context["quarantine_url"] = reverse(f"{self.name}:mailcore_delivery_changelist") + "?state=quarantined"
        return super().index(request, extra_context)


site = MailAdminSite(name="admin")


def _back(request, fallback: str) -> HttpResponseRedirect:
    """Back to the page the action was sent from (the list with its filters), if that is our own."""
    target = request.POST.get("next") or request.META.get("HTTP_REFERER", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        target = fallback
    return HttpResponseRedirect(target)


def _row_button(url: str, label: str, css: str = "") -> str:
    # Inside the change list's own <form>, which carries the CSRF token: formaction posts it here.
    return format_html(
        '<button type="submit" class="button mail-row-action {}" formaction="{}" formmethod="post">{}</button>', css, url, label
    )


# --- domains, mailboxes, aliases -----------------------------------------------------------------


@admin.register(models.Domain, site=site)
class DomainAdmin(admin.ModelAdmin):
    form = DomainForm
    list_display = ["name", "unverified_policy", "authenticated_policy", "active", "mailbox_count", "created_at"]
    list_editable = ["unverified_policy", "active"]
    list_filter = ["unverified_policy", "active"]
    search_fields = ["name"]

    @admin.display(description="mailboxes")
    def mailbox_count(self, obj):
        return obj.mailboxes.count()

    def save_model(self, request, obj, form, change):
        if change:
            accounts.set_domain(
                obj.name, unverified_policy=obj.unverified_policy, active=obj.active, authenticated_policy=obj.authenticated_policy
            )
        else:
            created = accounts.add_domain(obj.name, obj.unverified_policy)
            accounts.set_domain(obj.name, active=obj.active, authenticated_policy=obj.authenticated_policy)
            obj.pk, obj.created_at = created.pk, created.created_at

    def get_readonly_fields(self, request, obj=None):
        return ["name"] if obj else []

    change_form_template = "admin/mailcore/domain/change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The records to publish, each checked against live DNS (MAIL_DNS_SERVERS) as the page loads.
        domain = self.get_object(request, unquote(object_id))
        if domain is not None:
            extra_context = {**(extra_context or {}), "dns_records": dkim_keys.check_published(domain.name)}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(models.Mailbox, site=site)
class MailboxAdmin(admin.ModelAdmin):
    list_display = ["address", "domain", "active", "usage", "held_count", "created_at"]
    list_filter = ["active", "domain"]
    search_fields = ["address"]
    change_form_template = "admin/mailcore/mailbox/change_form.html"

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = MailboxChangeForm if obj else MailboxCreationForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["address", "active", "quota_bytes", "usage"] if obj else ["address", "password1", "password2", "active", "quota_bytes"]

    def get_readonly_fields(self, request, obj=None):
        return ["address", "usage"] if obj else []

    @admin.display(description="used / quota", ordering="used_bytes")
    def usage(self, obj):
        used = filesizeformat(obj.used_bytes)
        if not obj.has_quota:
            return f"{used} / no quota"
        return f"{used} / {filesizeformat(obj.quota_bytes)} ({min(100, round(100 * obj.used_bytes / obj.quota_bytes))}%)"

    @admin.display(description="quarantined")
    def held_count(self, obj):
        return obj.deliveries.filter(state=models.DeliveryState.QUARANTINED).count()

    def save_model(self, request, obj, form, change):
        if change:
            accounts.set_mailbox(obj.address, active=obj.active, quota_bytes=obj.quota_bytes)
            return
        created = accounts.add_mailbox(form.cleaned_data["address"], form.cleaned_data["password1"], obj.quota_bytes, obj.active)
        obj.pk, obj.domain, obj.password, obj.created_at = created.pk, created.domain, created.password, created.created_at

    def get_urls(self):
        return [
            path("<path:object_id>/password/", self.admin_site.admin_view(self.password_view), name="mailcore_mailbox_password"),
            *super().get_urls(),
        ]

    def password_view(self, request, object_id):
        mailbox = self.get_object(request, unquote(object_id))
        if mailbox is None:
            raise Http404("no such mailbox")
        if not self.has_change_permission(request, mailbox):
            raise PermissionDenied
        form = MailboxPasswordForm(mailbox, request.POST or None)
        if request.method == "POST" and form.is_valid():
            accounts.set_password(mailbox.address, form.cleaned_data["password1"])
            self.log_change(request, mailbox, "Changed the password.")
            messages.success(request, f"The password of {mailbox.address} was changed.")
            return HttpResponseRedirect(reverse("admin:mailcore_mailbox_change", args=[mailbox.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Set the password of {mailbox.address}",
            "form": form,
            "mailbox": mailbox,
            "opts": self.opts,
            "original": mailbox,
        }
        return TemplateResponse(request, "admin/mailcore/mailbox/password.html", context)


@admin.register(models.Alias, site=site)
class AliasAdmin(admin.ModelAdmin):
    form = AliasForm
    list_display = ["source", "target", "domain"]
    list_filter = ["domain"]
    search_fields = ["source", "target"]

    def save_model(self, request, obj, form, change):
        if change:
            # The source fixes the domain; an edited alias is removed and added anew through the service.
            old = models.Alias.objects.get(pk=obj.pk)
            accounts.remove_alias(old.source, old.target)
        created = accounts.add_alias(obj.source, obj.target)
        obj.pk, obj.domain, obj.created_at = created.pk, created.domain, created.created_at


# --- messages and the quarantine -------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the engines write; the console shows them and acts only through its actions."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class DeliveryInline(admin.TabularInline):
    model = models.Delivery
    extra = 0
    fields = ["mailbox", "state", "reason", "uid", "delivered_at", "retrieved_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(models.Message, site=site)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["queue_id", "received_at", "mail_from", "header_from", "subject", "transport", "verification_badge", "size",
                    "client_address"]
    list_filter = ["verification", "transport", "received_at"]
    search_fields = ["queue_id", "mail_from", "header_from", "subject", "client_address", "helo_name"]
    date_hierarchy = "received_at"

    @admin.display(description="verification", ordering="verification")
    def verification_badge(self, obj):
        return format_html('<span class="mail-badge mail-{}">{}</span>', obj.verification, obj.get_verification_display())

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/raw/", view(self.raw_view), name="mailcore_message_raw"),
            path("<path:object_id>/html/", view(self.html_view), name="mailcore_message_html"),
            path("<path:object_id>/trace/", view(self.trace_view), name="mailcore_message_trace"),
            *super().get_urls(),
        ]

    def _message(self, request, object_id) -> models.Message:
        if not self.has_view_permission(request):
            raise PermissionDenied
        message = self.get_object(request, unquote(object_id))
        if message is None:
            raise Http404("no such message")
        return message

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The message view: envelope, headers, verification trail, text, attachments, sanitized HTML."""
        message = self._message(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            **message_pages.context(message, show_html_as_text=request.GET.get("html") == "text"),
            "title": message.subject or "(no subject)",
            "subtitle": message.queue_id,
            "opts": self.opts,
            "original": message,
            "deliveries": message.deliveries.select_related("mailbox").order_by("id"),
            "can_act": request.user.has_perm("mailcore.change_delivery"),
            "raw_url": reverse("admin:mailcore_message_raw", args=[message.pk]),
            "html_url": reverse("admin:mailcore_message_html", args=[message.pk]),
            "trace_url": reverse("admin:mailcore_message_trace", args=[message.pk]),
            "release_url_name": "admin:mailcore_delivery_release",
            "delete_url_name": "admin:mailcore_delivery_delete",
        }
        return TemplateResponse(request, "admin/mailcore/message/view.html", context)

    def raw_view(self, request, object_id):
        return message_pages.raw_response(self._message(request, object_id))

    def html_view(self, request, object_id):
        return message_pages.html_frame_response(self._message(request, object_id))

    def trace_view(self, request, object_id):
        message = self._message(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Trace of {message.queue_id}",
            "opts": self.opts,
            "original": message,
            "message": message,
            "events": trace(message),
            "message_url": reverse("admin:mailcore_message_change", args=[message.pk]),
        }
        return TemplateResponse(request, "admin/mailcore/message/trace.html", context)


class DeliveryStateFilter(admin.SimpleListFilter):
    """The delivery list opens on the quarantine: held mail is what an administrator acts on."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [*models.DeliveryState.choices, ("all", "all")]

    def value(self):
        return super().value() or models.DeliveryState.QUARANTINED

    def choices(self, changelist):
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        if self.value() == "all":
            return queryset
        return queryset.filter(state=self.value())


@admin.register(models.Delivery, site=site)
class DeliveryAdmin(admin.ModelAdmin):
    """The quarantine (and every other delivery, by the state filter)."""

    list_display = ["mailbox", "envelope_sender", "header_from", "recipients", "subject", "size", "received_at",
                    "client_address", "reason", "spam", "authentication", "state", "row_actions"]
    list_display_links = ["subject"]
    list_filter = [DeliveryStateFilter, "mailbox__domain", "mailbox", "reason", "delivered_at"]
    search_fields = ["mailbox__address", "message__queue_id", "message__mail_from", "message__header_from", "message__subject",
                     "message__client_address", "uid"]
    date_hierarchy = "delivered_at"
    actions = ["release_selected", "delete_selected_held", quarantine_admin.delete_selected_as_spam,
               quarantine_admin.allow_senders_for_domain, quarantine_admin.block_senders_for_domain]
    list_select_related = ["message", "mailbox", "mailbox__domain"]
    list_per_page = 50
    ordering = ["-delivered_at", "-id"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deliveries are marked deleted through the quarantine service, never removed as rows.
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:delivery_id>/release/", view(require_POST(self.release_view)), name="mailcore_delivery_release"),
            path("<int:delivery_id>/delete/", view(require_POST(self.delete_view_held)), name="mailcore_delivery_delete"),
            path("<int:delivery_id>/sender/<str:action>/", view(require_POST(self.sender_view)), name="mailcore_delivery_sender"),
            *super().get_urls(),
        ]

    def get_list_display(self, request):
        # In the quarantine every row is held: the state column only matters in the other views.
        if request.GET.get("state", "quarantined") == "quarantined":
            return [name for name in self.list_display if name != "state"]
        return self.list_display

    def changelist_view(self, request, extra_context=None):
        title = "Quarantine" if request.GET.get("state", "quarantined") == "quarantined" else "Deliveries"
        return super().changelist_view(request, {**(extra_context or {}), "title": title})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # A delivery is shown as its message, where release and delete are offered.
        delivery = self.get_object(request, unquote(object_id))
        if delivery is None:
            raise Http404("no such delivery")
        return HttpResponseRedirect(reverse("admin:mailcore_message_change", args=[delivery.message_id]))

    @admin.display(description="authentication", ordering="message__verification")
    def authentication(self, obj):
        """The verdict class and each method's result (SPF, DKIM, DMARC, ARC), as recorded on arrival."""
        methods = summary(obj.message.auth_methods or {})
        return format_html(
            '<span class="mail-badge mail-{}">{}</span> {}',
            obj.message.verification,
            obj.message.get_verification_display(),
            " ".join(f"{m}={r}" for m, r in methods.items()),
        )

    @admin.display(description="envelope sender", ordering="message__mail_from")
    def envelope_sender(self, obj):
        return f"<{obj.message.mail_from}>"

    @admin.display(description="From:", ordering="message__header_from")
    def header_from(self, obj):
        return obj.message.header_from

    @admin.display(description="recipients")
    def recipients(self, obj):
        return ", ".join(obj.message.rcpt_tos)

    @admin.display(description="subject", ordering="message__subject")
    def subject(self, obj):
        return obj.message.subject or "(no subject)"

    @admin.display(description="size", ordering="message__size")
    def size(self, obj):
        return filesizeformat(obj.message.size)

    @admin.display(description="received", ordering="message__received_at")
    def received_at(self, obj):
        return obj.message.received_at

    @admin.display(description="client", ordering="message__client_address")
    def client_address(self, obj):
        return obj.message.client_address

    @admin.display(description="spam score", ordering="message__spam_score")
    def spam(self, obj):
        """Score and the rules that hit, so a held message's reason is plain in the list."""
        message = obj.message
        if message.spam_score is None:
            return message.get_spam_status_display()
        rules = ", ".join(message.spam_rules[:6]) + (" ..." if len(message.spam_rules) > 6 else "")
        return f"{message.spam_score:.1f} ({rules})" if rules else f"{message.spam_score:.1f}"

    @admin.display(description="")
    def row_actions(self, obj):
        if obj.state != models.DeliveryState.QUARANTINED:
            return ""
        return format_html(
            "{} {}",
            _row_button(reverse("admin:mailcore_delivery_release", args=[obj.pk]), "Release", "mail-release"),
            _row_button(reverse("admin:mailcore_delivery_delete", args=[obj.pk]), "Delete", "mail-delete"),
        ) + quarantine_admin.sender_buttons(obj, _row_button)

    def sender_view(self, request, delivery_id, action):
        self._check_change(request)
        return quarantine_admin.sender_view(request, get_object_or_404(models.Delivery, pk=delivery_id), action, _back)

    def _check_change(self, request):
        if not self.has_change_permission(request):
            raise PermissionDenied

    def release_view(self, request, delivery_id):
        self._check_change(request)
        get_object_or_404(models.Delivery, pk=delivery_id)
        try:
            delivery = quarantine.release(delivery_id)
        except quarantine.QuarantineError:
            messages.info(request, f"Message {delivery_id} is no longer held: nothing to release.")
        else:
            self.log_change(request, delivery, "Released from quarantine.")
            messages.success(request, f"Released message {delivery_id} to {delivery.mailbox.address}.")
        return _back(request, reverse("admin:mailcore_delivery_changelist"))

    def delete_view_held(self, request, delivery_id):
        self._check_change(request)
        get_object_or_404(models.Delivery, pk=delivery_id)
        try:
            delivery = quarantine.delete(delivery_id)
        except quarantine.QuarantineError:
            messages.info(request, f"Message {delivery_id} is no longer held: nothing to delete.")
        else:
            self.log_change(request, delivery, "Deleted from quarantine.")
            messages.success(request, f"Deleted message {delivery_id} from the quarantine of {delivery.mailbox.address}.")
        return _back(request, reverse("admin:mailcore_delivery_changelist"))

    @admin.action(description="Release the selected messages to the inbox", permissions=["change"])
    def release_selected(self, request, queryset):
        result = quarantine.release_many(queryset.values_list("pk", flat=True))
        self._report(request, "Released", result)

    @admin.action(description="Delete the selected held messages", permissions=["change"])
    def delete_selected_held(self, request, queryset):
        result = quarantine.delete_many(queryset.values_list("pk", flat=True))
        self._report(request, "Deleted", result)

    def _report(self, request, verb, result):
        if result.done:
            messages.success(request, f"{verb} {len(result.done)} message(s).")
        if result.not_held:
            messages.info(request, f"{len(result.not_held)} selected message(s) were not held: left as they are.")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


# --- reverse delivery and the outbound queue ------------------------------------------------------


@admin.register(models.Announcement, site=site)
class AnnouncementAdmin(ReadOnlyAdmin):
    """The forgery log: every SOURCE we accepted, and whether its body could be pulled back."""

    list_display = ["source_id", "received_at", "mail_from", "client_address", "helo_name", "state_badge", "attempts",
                    "next_attempt_at", "last_error", "message_link"]
    list_filter = ["state", "sender_domain", "received_at"]
    search_fields = ["source_id", "mail_from", "sender_domain", "client_address", "helo_name"]
    date_hierarchy = "received_at"

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return format_html('<span class="mail-badge mail-{}">{}</span>', obj.state, obj.get_state_display())

    @admin.display(description="message")
    def message_link(self, obj):
        if not obj.message_id:
            return ""
        return format_html('<a href="{}">view</a>', reverse("admin:mailcore_message_change", args=[obj.message_id]))


@admin.register(models.SourcePin, site=site)
class SourcePinAdmin(ReadOnlyAdmin):
    """The downgrade memory (reverse-delivery.md §5.8): DATA mail claiming these domains is held as "downgrade"."""

    list_display = ["domain", "last_verified_at", "remembered_until", "verified_count", "first_verified_at"]
    search_fields = ["domain"]
    actions = ["forget_selected"]

    @admin.display(description="remembered until")
    def remembered_until(self, obj):
        days = settings.MAIL_SOURCE_PIN_DAYS
        return obj.last_verified_at + timedelta(days=days) if days > 0 else "memory off"

    def has_delete_permission(self, request, obj=None):
        # Forgetting is deleting the row: staff with the delete permission (and superusers) may.
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "forget" says what it does
        return actions

    @admin.action(description="Forget the selected domains (their DATA mail is plain unverified again)",
                  permissions=["delete"])
    def forget_selected(self, request, queryset):
        names = sorted(queryset.values_list("domain", flat=True))
        forgotten = [name for name in names if pins.forget(name)]
        self.message_user(request, f"Forgot {len(forgotten)} domain(s): {', '.join(forgotten) or 'none'}.", messages.SUCCESS)


@admin.register(models.QueueItem, site=site)
class QueueItemAdmin(ReadOnlyAdmin):
    list_display = ["message_link", "recipient", "state", "attempts", "next_attempt_at", "remote_host", "last_reply", "row_actions"]
    list_filter = ["state", "domain"]
    search_fields = ["recipient", "message__queue_id", "message__mail_from", "remote_host", "last_reply"]
    actions = ["retry_selected", "hold_selected", "delete_selected_items"]
    list_select_related = ["message"]

    def has_change_permission(self, request, obj=None):
        # Changing means the queue actions, not editing fields: the form stays read-only.
        return obj is None and request.user.has_perm("mailcore.change_queueitem")

    def has_delete_permission(self, request, obj=None):
        return obj is None and request.user.has_perm("mailcore.delete_queueitem")

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:item_id>/<str:action>/", view(require_POST(self.action_view)), name="mailcore_queueitem_act"),
            *super().get_urls(),
        ]

    @admin.display(description="message", ordering="message__queue_id")
    def message_link(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("admin:mailcore_message_change", args=[obj.message_id]), obj.message.queue_id)

    @admin.display(description="")
    def row_actions(self, obj):
        if obj.state not in models.ACTIVE_STATES:
            return ""
        buttons = [("retry", "Retry now")]
        if obj.state != models.QueueState.HELD:
            buttons.append(("hold", "Hold"))
        buttons.append(("delete", "Delete"))
        # Each button is already escaped by format_html.
        return mark_safe(" ".join(
            _row_button(reverse("admin:mailcore_queueitem_act", args=[obj.pk, action]), label, f"mail-{action}")
            for action, label in buttons
        ))

    def action_view(self, request, item_id, action):
        functions = {"retry": queue_control.retry_now, "hold": queue_control.hold, "delete": queue_control.delete}
        if action not in functions:
            raise Http404("no such queue action")
        allowed = self.has_delete_permission(request) if action == "delete" else self.has_change_permission(request)
        if not allowed:
            raise PermissionDenied
        get_object_or_404(models.QueueItem, pk=item_id)
        changed = functions[action]([item_id])
        if changed:
            messages.success(request, f"Queue item {item_id}: {action} done.")
        else:
            messages.info(request, f"Queue item {item_id} is no longer waiting: nothing to {action}.")
        return _back(request, reverse("admin:mailcore_queueitem_changelist"))

    @admin.action(description="Retry the selected items now", permissions=["change"])
    def retry_selected(self, request, queryset):
        messages.success(request, f"{queue_control.retry_now(queryset.values_list('pk', flat=True))} item(s) due now.")

    @admin.action(description="Hold the selected items", permissions=["change"])
    def hold_selected(self, request, queryset):
        messages.success(request, f"{queue_control.hold(queryset.values_list('pk', flat=True))} item(s) held.")

    @admin.action(description="Delete the selected items from the queue", permissions=["delete"])
    def delete_selected_items(self, request, queryset):
        messages.success(request, f"{queue_control.delete(queryset.values_list('pk', flat=True))} item(s) deleted.")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(models.SourcedMessage, site=site)
class SourcedMessageAdmin(ReadOnlyAdmin):
    list_display = ["source_id", "created_at", "mail_from", "destination_host", "expires_at", "fetch_count", "last_fetch_at",
                    "last_fetch_address", "expired"]
    list_filter = ["expired"]
    search_fields = ["source_id", "mail_from", "destination_host"]


@admin.register(models.MailboxLock, site=site)
class MailboxLockAdmin(ReadOnlyAdmin):
    list_display = ["mailbox", "holder", "expires_at"]

    def has_delete_permission(self, request, obj=None):
        # A lock left by a crashed session can be removed by hand before it lapses.
        return request.user.has_perm("mailcore.delete_mailboxlock")


class SuperuserReadOnly:
    """For django-q2's schedules, tasks and queue: superusers only, and read-only even for them.

    A schedule's `func` is any import path and qcluster runs it, and resubmitting a task runs it
    again: whoever may add, change or resubmit can run code on the server. Staff see none of it.
    """

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request, *args) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request) -> dict:
        return {}  # "resubmit task" among them


quarantine_admin.register(site)


def adopt_default_registrations() -> None:
    """Show what was registered on Django's default site (users, groups, django-q2, other modules) on ours too."""
    for model, model_admin in admin.site._registry.items():
        if not site.is_registered(model):
            admin_class = type(model_admin)
            if model._meta.app_label == "django_q":
                admin_class = type(admin_class.__name__, (SuperuserReadOnly, admin_class), {})
            site.register(model, admin_class)

