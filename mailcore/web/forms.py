"""Forms of the web UI: domains, mailboxes and their passwords, aliases, and the mailbox owners' login."""

from __future__ import annotations

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.models import User

from mailcore.addresses import AddressError, domain_of, normalize_address, normalize_domain
from mailcore.models import Alias, AuthenticatedPolicy, Domain, Mailbox
from mailcore.services import accounts
from mailcore.services.login_failures import LoginFailures


def _password_user(address: str) -> User:
    # Django's UserAttributeSimilarityValidator compares a password with a user's attributes; an
    # unsaved User standing for the mailbox makes it refuse passwords that resemble the address.
    return User(username=address.partition("@")[0], email=address)


class DomainForm(forms.ModelForm):
    class Meta:
        model = Domain
        fields = ["name", "unverified_policy", "authenticated_policy", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A form that leaves it out (a script's POST from before the setting existed) keeps the default.
        self.fields["authenticated_policy"].required = False

    def clean_authenticated_policy(self) -> str:
        return self.cleaned_data.get("authenticated_policy") or AuthenticatedPolicy.VERIFIED

    def clean_name(self) -> str:
        try:
            return normalize_domain(self.cleaned_data["name"])
        except AddressError as exc:
            raise forms.ValidationError(str(exc), code="invalid")


class SetPasswordFields(forms.Form):
    """Two password fields checked against each other and AUTH_PASSWORD_VALIDATORS."""

    password1 = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
                                help_text=password_validation.password_validators_help_text_html())
    password2 = forms.CharField(label="Password again", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def address_for_validation(self) -> str:
        raise NotImplementedError

    def clean_password2(self) -> str:
        password1 = self.cleaned_data.get("password1")
        password2 = self.cleaned_data["password2"]
        if password1 and password1 != password2:
            raise forms.ValidationError("The two passwords differ.", code="password_mismatch")
        address = self.address_for_validation()
        password_validation.validate_password(password2, _password_user(address) if address else None)
        return password2


class MailboxCreationForm(forms.ModelForm):
    password1 = SetPasswordFields.base_fields["password1"]
    password2 = SetPasswordFields.base_fields["password2"]

    class Meta:
        model = Mailbox
        fields = ["address", "active", "quota_bytes"]

    def clean_address(self) -> str:
        try:
            address = normalize_address(self.cleaned_data["address"])
        except AddressError as exc:
            raise forms.ValidationError(str(exc), code="invalid")
        if not Domain.objects.filter(name=domain_of(address)).exists():
            raise forms.ValidationError(f"{domain_of(address)} is not a local domain: add the domain first.", code="unknown_domain")
        if Mailbox.objects.filter(address=address).exists():
            raise forms.ValidationError(f"Mailbox {address} already exists.", code="duplicate")
        return address

    clean_password2 = SetPasswordFields.clean_password2

    def address_for_validation(self) -> str:
        return self.cleaned_data.get("address", "")


class MailboxChangeForm(forms.ModelForm):
    class Meta:
        model = Mailbox
        fields = ["active", "quota_bytes"]


class MailboxPasswordForm(SetPasswordFields):
    def __init__(self, mailbox: Mailbox, *args, **kwargs):
        self.mailbox = mailbox
        super().__init__(*args, **kwargs)

    def address_for_validation(self) -> str:
        return self.mailbox.address


class AliasForm(forms.ModelForm):
    class Meta:
        model = Alias
        fields = ["source", "target"]
        help_texts = {"source": "local@domain, or @domain for a catch-all of a local domain."}

    def clean_source(self) -> str:
        source = self.cleaned_data["source"].strip()
        try:
            if source.startswith("@"):
                domain = normalize_domain(source[1:])
                source = f"@{domain}"
            else:
                source = normalize_address(source)
                domain = domain_of(source)
        except AddressError as exc:
            raise forms.ValidationError(str(exc), code="invalid")
        if not Domain.objects.filter(name=domain).exists():
            raise forms.ValidationError(f"{domain} is not a local domain.", code="unknown_domain")
        return source

    def clean_target(self) -> str:
        try:
            return normalize_address(self.cleaned_data["target"])
        except AddressError as exc:
            raise forms.ValidationError(str(exc), code="invalid")

    def clean(self):
        cleaned = super().clean()
        source, target = cleaned.get("source"), cleaned.get("target")
        if source and target:
            if source == target:
                raise forms.ValidationError("An alias cannot point at itself.", code="loop")
            duplicates = Alias.objects.filter(source=source, target=target)
            if self.instance.pk:
                duplicates = duplicates.exclude(pk=self.instance.pk)
            if duplicates.exists():
                raise forms.ValidationError(f"The alias {source} -> {target} already exists.", code="duplicate")
        return cleaned


class OwnerLoginForm(forms.Form):
    address = forms.CharField(
        label="Mailbox address", max_length=320, widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "username"})
    )
    password = forms.CharField(strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))

    LOCKED_OUT = "Too many failed sign-ins from your address. Try again later."

    def __init__(self, *args, client_address: str = "", **kwargs):
        self.mailbox = None
        self.client_address = client_address
        super().__init__(*args, **kwargs)

    def clean(self):
        cleaned = super().clean()
        address, password = cleaned.get("address"), cleaned.get("password")
        if address and password:
            # The same count as submission and POP3 (the same passwords): a guesser locked out
            # there gets no fresh guesses here, and the reverse. No delay after a failure: it
            # would hold one of the web server's few threads, and the count, reserved before
            # the password is checked, already caps the guesses an address gets per window.
            try:
                self.mailbox = accounts.login(self.client_address, address, password)
            except accounts.LoginBlocked:
                raise forms.ValidationError(self.LOCKED_OUT, code="locked_out") from None
            if self.mailbox is None:
                if LoginFailures().blocked(self.client_address):  # this failure reached the limit
                    raise forms.ValidationError(self.LOCKED_OUT, code="locked_out")
                # One message for unknown address, wrong password and disabled mailbox alike.
                raise forms.ValidationError("Wrong address or password.", code="invalid_login")
        return cleaned
