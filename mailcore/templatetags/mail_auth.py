"""`{% load mail_auth %}`: a message's authentication results in a listing, without parsing its headers."""

from django import template

from mailcore.authentication.results import summary

register = template.Library()


@register.filter
def auth_summary(message) -> list[tuple[str, str]]:
    """(method, result) for spf, dkim, dmarc and arc as recorded on arrival; [] when it was not checked."""
    return list(summary(message.auth_methods or {}).items())
