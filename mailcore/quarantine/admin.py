"""The console's side of the quarantine: sender lists (global and per domain), the audit log, and
quarantine actions that act on senders ("always allow" / "block" for the message's domain) or
report spam."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import Http404
from django.urls import reverse
from django.utils.html import format_html

from mailcore import models
from mailcore.services import quarantine, senders


class SenderRuleForm(forms.ModelForm):
    """Administrators set global and domain entries; a mailbox's own entries are its owner's."""

    class Meta:
        model = models.SenderRule
        fields = ["action", "pattern", "scope", "domain"]

    scope = forms.ChoiceField(choices=[(models.SenderScope.GLOBAL, "every local domain"), (models.SenderScope.DOMAIN, "one domain")])

    def clean(self):
        cleaned = super().clean()
        try:
            cleaned["pattern"] = senders.normalize_pattern(cleaned.get("pattern", ""))
        except senders.SenderListError as exc:
            self.add_error("pattern", str(exc))
        if cleaned.get("scope") == models.SenderScope.DOMAIN and not cleaned.get("domain"):
            self.add_error("domain", "Choose the domain this entry is for.")
        if cleaned.get("scope") == models.SenderScope.GLOBAL:
            cleaned["domain"] = None
        return cleaned

    def validate_unique(self):
        """set_entry replaces the other action for the same pattern and scope: no uniqueness error for that."""


class SenderRuleAdmin(admin.ModelAdmin):
    form = SenderRuleForm
    list_display = ["pattern", "action", "scope", "scope_target", "created_by", "created_at"]
    list_filter = ["action", "scope", "domain"]
    search_fields = ["pattern", "domain__name", "mailbox__address"]
    list_select_related = ["domain", "mailbox"]

    @admin.display(description="for")
    def scope_target(self, obj):
        return obj.scope_name

    def has_change_permission(self, request, obj=None):
        # An entry is added or removed, never edited in place (each change is one audit entry).
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        scope = senders.domain_scope(data["domain"]) if data["scope"] == models.SenderScope.DOMAIN else senders.GLOBAL
        saved = senders.set_entry(data["action"], data["pattern"], scope)
        obj.pk, obj.created_at = saved.pk, saved.created_at

    def delete_model(self, request, obj):
        senders.remove_entry(obj.pattern, _scope_of(obj))

    def delete_queryset(self, request, queryset):
        for rule in queryset.select_related("domain", "mailbox"):
            senders.remove_entry(rule.pattern, _scope_of(rule))


def _scope_of(rule: models.SenderRule) -> senders.Scope:
    if rule.scope == models.SenderScope.MAILBOX:
        return senders.mailbox_scope(rule.mailbox)
    if rule.scope == models.SenderScope.DOMAIN:
        return senders.domain_scope(rule.domain)
    return senders.GLOBAL


class AuditEntryAdmin(admin.ModelAdmin):
    """Who released, deleted, allowed, blocked or changed what, when and from where; never edited."""

    list_display = ["at", "actor_kind", "actor", "client_address", "action", "mailbox", "target", "detail"]
    list_filter = ["action", "actor_kind", "at"]
    search_fields = ["actor", "mailbox", "target", "client_address", "detail"]
    date_hierarchy = "at"
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _sender_action(action: str):
    def act(modeladmin, request, queryset):
        done = set()
        for delivery in queryset.select_related("message", "mailbox__domain"):
            try:
                pattern, _moved = senders.set_from_message(action, delivery, senders.domain_scope(delivery.mailbox.domain))
            except senders.SenderListError:
                continue
            done.add((pattern, delivery.mailbox.domain_id))
        verb = "Allowed" if action == senders.ALLOW else "Blocked"
        messages.success(request, f"{verb} {len(done)} sender(s) for their domain: " + ", ".join(sorted(f"{p}" for p, _ in done)))

    act.__name__ = f"{action}_senders_for_domain"
    return act


allow_senders_for_domain = admin.action(
    description="Always allow these senders for the recipient's domain (and release)", permissions=["change"]
)(_sender_action(senders.ALLOW))
block_senders_for_domain = admin.action(
    description="Block these senders for the recipient's domain (and delete)", permissions=["change"]
)(_sender_action(senders.BLOCK))


@admin.action(description="Delete the selected held messages as spam (and teach spamd)", permissions=["change"])
def delete_selected_as_spam(modeladmin, request, queryset):
    result = quarantine.delete_many(queryset.values_list("pk", flat=True), as_spam=True)
    modeladmin._report(request, "Deleted as spam", result)


def sender_buttons(delivery, button) -> str:
    """The quarantine list's "always allow" / "block" buttons: an administrator's scope is the recipient's domain."""
    domain = delivery.mailbox.domain.name
    return format_html(
        " {} {}",
        button(reverse("admin:mailcore_delivery_sender", args=[delivery.pk, "allow"]), f"Allow sender for {domain}", "mail-allow-sender"),
        button(reverse("admin:mailcore_delivery_sender", args=[delivery.pk, "block"]), f"Block sender for {domain}", "mail-block-sender"),
    )


def sender_view(request, delivery, action: str, back):
    if action not in (senders.ALLOW, senders.BLOCK):
        raise Http404("no such action")
    domain = delivery.mailbox.domain
    try:
        pattern, moved = senders.set_from_message(action, delivery, senders.domain_scope(domain))
    except senders.SenderListError as exc:
        messages.error(request, str(exc))
    else:
        verb = "Allowed" if action == senders.ALLOW else "Blocked"
        messages.success(request, f"{verb} {pattern} for {domain.name}." + (f" Message {delivery.pk} {moved}." if moved else ""))
    return back(request, reverse("admin:mailcore_delivery_changelist"))


def register(site) -> None:
    site.register(models.SenderRule, SenderRuleAdmin)
    site.register(models.AuditEntry, AuditEntryAdmin)
