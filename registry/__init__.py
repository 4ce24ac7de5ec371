"""The registry domain: units, monitoring hardware, users and what each role may do (UM1), sign-in
and sessions, WeChat web authorisation, and Forms 1–5 that change the registry. Its rules and
queries live here; the web layer (``api/``, ``dashboards/``) only parses, authorises, calls and
serialises."""
