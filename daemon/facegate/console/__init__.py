"""The operator console (``facegate admin``): a separate process serving a web page and an HTTP API over the
daemon's gallery, audit log and state file. See ``console/app.py`` for its security rules and README "Operator
console" for why it is a process of its own."""
