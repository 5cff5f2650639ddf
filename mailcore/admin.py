"""The Django admin as the mail server's console: every model, with useful columns and filters."""

from django.contrib import admin

from mailcore import models


@admin.register(models.Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["name", "unverified_policy", "active", "created_at"]
    list_editable = ["unverified_policy", "active"]
    list_filter = ["unverified_policy", "active"]
    search_fields = ["name"]


@admin.register(models.Mailbox)
class MailboxAdmin(admin.ModelAdmin):
    list_display = ["address", "domain", "active", "quota_bytes", "created_at"]
    list_filter = ["active", "domain"]
    search_fields = ["address"]
    exclude = ["password"]


@admin.register(models.Alias)
class AliasAdmin(admin.ModelAdmin):
    list_display = ["source", "target", "domain"]
    list_filter = ["domain"]
    search_fields = ["source", "target"]


class DeliveryInline(admin.TabularInline):
    model = models.Delivery
    extra = 0
    fields = ["mailbox", "state", "reason", "uid", "delivered_at", "retrieved_at"]
    readonly_fields = fields


@admin.register(models.Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["queue_id", "received_at", "mail_from", "header_from", "subject", "transport", "verification", "size", "client_address"]
    list_filter = ["verification", "transport", "received_at"]
    search_fields = ["queue_id", "mail_from", "header_from", "subject", "client_address", "helo_name"]
    readonly_fields = [f.name for f in models.Message._meta.fields]
    inlines = [DeliveryInline]
    date_hierarchy = "received_at"


@admin.register(models.Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "mailbox", "message", "state", "reason", "delivered_at", "retrieved_at"]
    list_filter = ["state", "reason", "mailbox__domain"]
    search_fields = ["mailbox__address", "message__queue_id", "message__mail_from", "message__subject", "uid"]
    raw_id_fields = ["message", "mailbox"]


@admin.register(models.QueueItem)
class QueueItemAdmin(admin.ModelAdmin):
    list_display = ["message", "recipient", "state", "attempts", "next_attempt_at", "remote_host", "last_reply"]
    list_filter = ["state", "domain"]
    search_fields = ["recipient", "message__queue_id", "message__mail_from", "remote_host"]
    raw_id_fields = ["message"]


@admin.register(models.Announcement)
class AnnouncementAdmin(admin.ModelAdmin):
    list_display = ["source_id", "received_at", "mail_from", "client_address", "helo_name", "state", "attempts", "last_error"]
    list_filter = ["state", "sender_domain"]
    search_fields = ["source_id", "mail_from", "client_address", "helo_name"]
    raw_id_fields = ["message"]


@admin.register(models.SourcedMessage)
class SourcedMessageAdmin(admin.ModelAdmin):
    list_display = [
        "source_id", "created_at", "mail_from", "destination_host", "expires_at",
        "fetch_count", "last_fetch_at", "last_fetch_address", "expired",
    ]
    list_filter = ["expired"]
    search_fields = ["source_id", "mail_from", "destination_host"]
    raw_id_fields = ["message"]


@admin.register(models.MailboxLock)
class MailboxLockAdmin(admin.ModelAdmin):
    list_display = ["mailbox", "holder", "expires_at"]
