"""Organizations by email domain: which company a customer belongs to.

Input: a customer's address (untrusted) and a look-up from a domain to an organization (passed
in by the caller). Output: the organization that owns the address's domain or its nearest parent
(`eu.acme.com` → `acme.com`), or why no organization may be created for a domain: free-mail and
ISP domains (a built-in list of the big providers plus `[customers] free_mail_domains`) and our
own domains never make one. Pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# The big free-mail and ISP providers: a customer there is a person, not a company.
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr",
    "hotmail.de", "hotmail.it", "hotmail.es", "live.com", "live.co.uk", "live.fr", "live.de",
    "msn.com", "passport.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.es",
    "yahoo.it", "yahoo.co.jp", "yahoo.com.br", "ymail.com", "rocketmail.com", "aol.com",
    "aim.com", "icloud.com", "me.com", "mac.com", "proton.me", "protonmail.com",
    "protonmail.ch", "pm.me", "gmx.com", "gmx.net", "gmx.de", "gmx.at", "gmx.ch", "web.de",
    "t-online.de", "freenet.de", "mail.com", "email.com", "zoho.com", "zohomail.com",
    "yandex.com", "yandex.ru", "ya.ru", "mail.ru", "inbox.ru", "list.ru", "bk.ru", "rambler.ru",
    "qq.com", "163.com", "126.com", "yeah.net", "sina.com", "sohu.com", "naver.com",
    "daum.net", "hanmail.net", "orange.fr", "wanadoo.fr", "free.fr", "sfr.fr", "laposte.net",
    "libero.it", "virgilio.it", "tiscali.it", "alice.it", "seznam.cz", "wp.pl", "o2.pl",
    "interia.pl", "onet.pl", "comcast.net", "verizon.net", "att.net", "sbcglobal.net",
    "bellsouth.net", "cox.net", "charter.net", "earthlink.net", "btinternet.com",
    "virginmedia.com", "sky.com", "talktalk.net", "bigpond.com", "optusnet.com.au",
    "shaw.ca", "rogers.com", "sympatico.ca", "uol.com.br", "bol.com.br", "terra.com.br",
    "rediffmail.com", "fastmail.com", "fastmail.fm", "hey.com", "tutanota.com", "tuta.io",
    "mailbox.org", "posteo.de", "hushmail.com", "gmx.fr", "bluewin.ch", "telenet.be",
    "skynet.be", "ziggo.nl", "kpnmail.nl", "home.nl", "planet.nl", "xs4all.nl",
})


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def parent_domains(domain: str) -> list[str]:
    """`eu.sales.acme.com` → [eu.sales.acme.com, sales.acme.com, acme.com]."""
    labels = domain.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def find_organization(address: str, lookup: Callable[[str], int | None]
                      ) -> tuple[int, str] | None:
    """The organization owning the address's domain or its nearest parent, and that domain."""
    for candidate in parent_domains(domain_of(address)):
        org = lookup(candidate)
        if org is not None:
            return org, candidate
    return None


def why_no_auto_organization(domain: str, free_mail: Iterable[str], our_domains: Iterable[str]
                             ) -> str | None:
    """None when an organization may be created for `domain`, else why not."""
    domain = domain.lower()
    if not domain or "." not in domain:
        return "not a company domain"
    free = FREE_MAIL_DOMAINS | {d.lower() for d in free_mail}
    if any(p in free for p in parent_domains(domain)):
        return f"{domain} is a free-mail or ISP domain"
    ours = {d.lower() for d in our_domains}
    if any(p in ours for p in parent_domains(domain)):
        return f"{domain} is one of our own domains"
    return None
