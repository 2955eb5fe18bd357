"""The admin HTTP endpoint: a JSON API, Prometheus metrics and server-rendered web panels,
served by aiohttp inside the daemon's process.

Input: HTTP requests from anyone who can reach `[admin] listen` (untrusted until they show the
admin token). Output: read views of tickets, audits, spool and outbox, and agent actions taken
through the library (`mailgate.ops.app.desk`). Modules: `token` (the token file), `auth` (bearer,
session cookie, CSRF), `backend` (the admin's own database connection and thread), `params`
(query and form values), `api` (JSON), `panels` (HTML), `server` (the aiohttp application and
its runner). This package's `__init__` imports nothing heavy, so the CLI can use `token` alone.
"""
