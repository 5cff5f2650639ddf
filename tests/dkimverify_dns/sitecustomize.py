"""Loaded by Python at start-up (PYTHONPATH) in the dkimverify process of tests/authentication/test_authentication_e2e.py.

dkimpy's command line tool resolves with dnspython's default resolver and has no option for
another: this points that resolver at the test DNS server named in TEST_DNS_SERVER.
"""

import os

address = os.environ.get("TEST_DNS_SERVER")
if address:
    import dns.nameserver
    import dns.resolver

    host, port = address.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, int(port))]
    dns.resolver.default_resolver = resolver
