"""The SMTP listeners (inbound MX and submission), on aiosmtpd."""
